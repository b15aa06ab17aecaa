//! The permission model of SPEC §2: `type:action[@scope[/resource]]`.
//!
//! Permissions are parsed once, at config load, into [`Permission`]; a route's need is a
//! [`Requirement`]; [`Permission::grants`] decides whether one grant covers one request.
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// One operation, as a bit in an [`ActionSet`]: the four of CRUD, and `approve` (which
/// means something only for `api_access`, SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    Approve,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Create => 1,
            Action::Read => 2,
            Action::Update => 4,
            Action::Delete => 8,
            Action::Approve => 16,
        }
    }

    /// Parses a single action: `create`, `read` (or its alias `view`), `update`, `delete`,
    /// `approve`.
    pub fn parse_single(s: &str) -> Option<Action> {
        match s {
            "create" => Some(Action::Create),
            "read" | "view" => Some(Action::Read),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            "approve" => Some(Action::Approve),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Read => "read",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Approve => "approve",
        }
    }
}

/// A set of actions; `change` is the four of CRUD, `*` all five.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionSet(u8);

impl ActionSet {
    /// `change`: create, read, update, delete.
    pub const CHANGE: ActionSet = ActionSet(15);
    /// `*`: every action, `approve` included.
    pub const ALL: ActionSet = ActionSet(31);

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    fn parse(s: &str) -> Option<ActionSet> {
        match s {
            "change" => Some(ActionSet::CHANGE),
            "*" => Some(ActionSet::ALL),
            other => Action::parse_single(other).map(|a| ActionSet(a.bit())),
        }
    }
}

/// How broadly a grant applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Org,
    Vault,
    Key,
}

/// A resource type: a named category or `*` (every category).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypeSel {
    Any,
    Named(Arc<str>),
}

/// A parsed grant, e.g. `balances:read@vault/v-123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permission {
    pub rtype: TypeSel,
    pub actions: ActionSet,
    pub scope: Scope,
    pub resource: Option<Arc<str>>,
    text: Arc<str>,
}

/// Why a permission string did not parse.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PermissionError {
    #[error("permission {0:?} is not of the form type:action[@scope[/resource]]")]
    Shape(String),
    #[error("permission {0:?}: type must be an identifier ([a-z0-9_-]) or *")]
    Type(String),
    #[error("permission {0:?}: action must be create, read, update, delete, approve, change, view or *")]
    Action(String),
    #[error("permission {0:?}: scope must be org, vault or key")]
    Scope(String),
    #[error("permission {0:?}: an org-scoped grant cannot name a resource")]
    OrgResource(String),
    #[error("permission {0:?}: bad resource id")]
    Resource(String),
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_resource_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'@')
}

impl Permission {
    /// Parses `type:action[@scope[/resource]]`.
    pub fn parse(s: &str) -> Result<Permission, PermissionError> {
        let (head, scope_part) = match s.split_once('@') {
            Some((h, sc)) => (h, Some(sc)),
            None => (s, None),
        };
        let (t, a) = head
            .split_once(':')
            .ok_or_else(|| PermissionError::Shape(s.to_string()))?;
        let rtype = if t == "*" {
            TypeSel::Any
        } else if is_ident(t) {
            TypeSel::Named(Arc::from(t))
        } else {
            return Err(PermissionError::Type(s.to_string()));
        };
        let actions = ActionSet::parse(a).ok_or_else(|| PermissionError::Action(s.to_string()))?;
        let (scope, resource) = match scope_part {
            None => (Scope::Org, None),
            Some(sc) => {
                let (name, res) = match sc.split_once('/') {
                    Some((n, r)) => (n, Some(r)),
                    None => (sc, None),
                };
                let scope = match name {
                    "org" => Scope::Org,
                    "vault" => Scope::Vault,
                    "key" => Scope::Key,
                    _ => return Err(PermissionError::Scope(s.to_string())),
                };
                let resource = match res {
                    None => None,
                    Some(_) if scope == Scope::Org => {
                        return Err(PermissionError::OrgResource(s.to_string()))
                    }
                    Some(r) if is_resource_id(r) => Some(Arc::from(r)),
                    Some(_) => return Err(PermissionError::Resource(s.to_string())),
                };
                (scope, resource)
            }
        };
        Ok(Permission {
            rtype,
            actions,
            scope,
            resource,
            text: Arc::from(s),
        })
    }

    /// The permission as written in config.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this grant covers `req` on a route that names `target` (SPEC §2).
    pub fn grants(&self, req: &Requirement, target: &Target<'_>) -> bool {
        self.check(req, target).is_ok()
    }

    /// Like [`Permission::grants`], but on a non-match says which part failed, first
    /// failure in this order: type, action, scope (`explain` prints it).
    pub fn check(&self, req: &Requirement, target: &Target<'_>) -> Result<(), Mismatch> {
        let type_ok = match &self.rtype {
            TypeSel::Any => true,
            TypeSel::Named(t) => **t == *req.rtype,
        };
        if !type_ok {
            return Err(Mismatch::Type);
        }
        if !self.actions.contains(req.action) {
            return Err(Mismatch::Action);
        }
        let resource_ok = |named: Option<&str>, none: Mismatch, other: Mismatch| match named {
            None => Err(none),
            Some(id) if self.resource.as_deref().is_none_or(|r| r == id) => Ok(()),
            Some(_) => Err(other),
        };
        match self.scope {
            Scope::Org => Ok(()),
            Scope::Vault => resource_ok(target.vault, Mismatch::RouteNamesNoVault, Mismatch::OtherVault),
            Scope::Key => resource_ok(target.key, Mismatch::RouteNamesNoKey, Mismatch::OtherKey),
        }
    }

    /// Whether every request this grant allows is also allowed by `other`
    /// (used to narrow a token's `scope` to what its client still holds).
    pub fn is_within(&self, other: &Permission) -> bool {
        let type_ok = match (&other.rtype, &self.rtype) {
            (TypeSel::Any, _) => true,
            (TypeSel::Named(_), TypeSel::Any) => false,
            (TypeSel::Named(o), TypeSel::Named(s)) => o == s,
        };
        if !type_ok || (self.actions.0 & !other.actions.0) != 0 {
            return false;
        }
        match (other.scope, self.scope) {
            (Scope::Org, _) => true,
            (os, ss) if os == ss => match (&other.resource, &self.resource) {
                (None, _) => true,
                (Some(o), Some(s)) => o == s,
                (Some(_), None) => false,
            },
            _ => false,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a grant does not cover a request ([`Permission::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The grant is for another resource type.
    Type,
    /// The grant does not include the action the route needs.
    Action,
    /// A vault-scoped grant, on a route that names no vault.
    RouteNamesNoVault,
    /// A key-scoped grant, on a route that names no key.
    RouteNamesNoKey,
    /// A grant for one vault, on a route that names another.
    OtherVault,
    /// A grant for one key, on a route that names another.
    OtherKey,
}

/// What a route needs: one type and one action (`balances:read`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub rtype: Arc<str>,
    pub action: Action,
}

impl Requirement {
    /// Parses `type:action` where action is a single operation (`view` = `read`).
    pub fn parse(s: &str) -> Result<Requirement, String> {
        let (t, a) = s
            .split_once(':')
            .ok_or_else(|| format!("require {s:?} is not of the form type:action"))?;
        if !is_ident(t) {
            return Err(format!("require {s:?}: type must be an identifier ([a-z0-9_-])"));
        }
        let action = Action::parse_single(a).ok_or_else(|| {
            format!("require {s:?}: action must be one of create, read, update, delete, approve, view")
        })?;
        Ok(Requirement {
            rtype: Arc::from(t),
            action,
        })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.rtype, self.action.as_str())
    }
}

/// What a request targets, from the route's path parameters (percent-decoded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Target<'a> {
    pub vault: Option<&'a str>,
    pub key: Option<&'a str>,
}

/// The permissions of a built-in role, or `None` if `name` is not built in.
pub fn builtin_role(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "wallets" => Some(&["vault:change", "key:change", "balances:read"]),
        "transactions" => Some(&["transactions:change"]),
        "controls" => Some(&["policies:change", "addresses:change"]),
        "monitoring" => Some(&["webhooks:change", "audit:read"]),
        _ => None,
    }
}

/// Names of the built-in roles.
pub const BUILTIN_ROLES: [&str; 4] = ["wallets", "transactions", "controls", "monitoring"];

/// Whether any of `grants` covers `req` on `target`.
pub fn any_grants(grants: &[Permission], req: &Requirement, target: &Target<'_>) -> bool {
    grants.iter().any(|g| g.grants(req, target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Permission {
        Permission::parse(s).unwrap()
    }
    fn r(s: &str) -> Requirement {
        Requirement::parse(s).unwrap()
    }
    const ORG: Target<'static> = Target {
        vault: None,
        key: None,
    };
    const V1: Target<'static> = Target {
        vault: Some("v-1"),
        key: None,
    };
    const V2: Target<'static> = Target {
        vault: Some("v-2"),
        key: None,
    };
    const K1: Target<'static> = Target {
        vault: None,
        key: Some("k-1"),
    };
    const V1K1: Target<'static> = Target {
        vault: Some("v-1"),
        key: Some("k-1"),
    };

    #[test]
    fn grant_request_table() {
        // (grant, requirement, target, allowed)
        let cases: &[(&str, &str, Target<'_>, bool)] = &[
            ("transactions:read", "transactions:read", ORG, true),
            ("transactions:read", "transactions:read", V1, true),
            ("transactions:read", "transactions:create", ORG, false),
            ("transactions:read", "balances:read", ORG, false),
            ("transactions:view", "transactions:read", ORG, true),
            ("transactions:change", "transactions:delete", ORG, true),
            ("transactions:change", "transactions:update", ORG, true),
            ("transactions:*", "transactions:create", ORG, true),
            ("*:read", "audit:read", ORG, true),
            ("*:read", "audit:delete", ORG, false),
            ("*:*", "anything:update", K1, true),
            ("balances:read@org", "balances:read", V1, true),
            ("balances:read@vault", "balances:read", V1, true),
            ("balances:read@vault", "balances:read", ORG, false),
            ("balances:read@vault", "balances:read", K1, false),
            ("balances:read@vault/v-1", "balances:read", V1, true),
            ("balances:read@vault/v-1", "balances:read", V2, false),
            ("balances:read@vault/v-1", "balances:read", ORG, false),
            ("balances:read@vault/v-1", "balances:read", V1K1, true),
            ("balances:read@vault/v-1", "balances:update", V1, false),
            ("key:change@key", "key:delete", K1, true),
            ("key:change@key", "key:delete", ORG, false),
            ("key:change@key", "key:create", V1, false),
            ("key:change@key/k-1", "key:read", V1K1, true),
            ("key:change@key/k-2", "key:read", V1K1, false),
            ("vault:read@vault/v-1", "vault:read", V1K1, true),
            ("vault:read@key/k-1", "vault:read", V1, false),
        ];
        for (grant, req, target, want) in cases {
            assert_eq!(
                p(grant).grants(&r(req), target),
                *want,
                "grant {grant} req {req} target {target:?}"
            );
        }
    }

    #[test]
    fn check_names_the_first_part_that_fails() {
        let cases: &[(&str, &str, Target<'_>, Result<(), Mismatch>)] = &[
            ("balances:read", "balances:read", V1, Ok(())),
            ("audit:read", "balances:read", V1, Err(Mismatch::Type)),
            ("audit:read@vault/v-2", "balances:create", V1, Err(Mismatch::Type)),
            ("balances:read@vault/v-2", "balances:create", V1, Err(Mismatch::Action)),
            ("balances:read@vault", "balances:read", ORG, Err(Mismatch::RouteNamesNoVault)),
            ("balances:read@vault/v-1", "balances:read", V2, Err(Mismatch::OtherVault)),
            ("key:read@key", "key:read", V1, Err(Mismatch::RouteNamesNoKey)),
            ("key:read@key/k-2", "key:read", V1K1, Err(Mismatch::OtherKey)),
        ];
        for (grant, req, target, want) in cases {
            let got = p(grant).check(&r(req), target);
            assert_eq!(got, *want, "grant {grant} req {req} target {target:?}");
            assert_eq!(p(grant).grants(&r(req), target), want.is_ok());
        }
    }

    #[test]
    fn denies_malformed_permissions() {
        for bad in [
            "",
            "balances",
            "balances:",
            ":read",
            "balances:write",
            "Balances:read",
            "balances:read@",
            "balances:read@tenant",
            "balances:read@org/x",
            "balances:read@vault/",
            "balances:read@vault/a/b",
            "bal ances:read",
        ] {
            assert!(Permission::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn allows_well_formed_permissions() {
        for good in [
            "balances:read",
            "*:*",
            "key:change@key",
            "balances:read@vault/v-123",
            "api_access:view@org",
        ] {
            assert!(Permission::parse(good).is_ok(), "{good:?} should parse");
        }
    }

    #[test]
    fn requirement_is_a_single_action() {
        assert!(Requirement::parse("balances:read").is_ok());
        assert_eq!(r("balances:view").action, Action::Read);
        assert!(Requirement::parse("balances:change").is_err());
        assert!(Requirement::parse("*:read").is_err());
        assert!(Requirement::parse("balances:read@vault").is_err());
    }

    #[test]
    fn builtin_roles_parse() {
        for role in BUILTIN_ROLES {
            for perm in builtin_role(role).unwrap() {
                p(perm);
            }
        }
    }

    #[test]
    fn narrowing() {
        assert!(p("balances:read").is_within(&p("balances:change")));
        assert!(!p("balances:change").is_within(&p("balances:read")));
        assert!(p("balances:read@vault/v-1").is_within(&p("balances:read@vault")));
        assert!(!p("balances:read@vault").is_within(&p("balances:read@vault/v-1")));
        assert!(p("balances:read@vault").is_within(&p("*:*")));
        assert!(!p("*:read").is_within(&p("balances:read")));
        assert!(!p("balances:read@key").is_within(&p("balances:read@vault")));
    }

    fn arb_perm() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("balances"), Just("key"), Just("*")],
            prop_oneof![Just("read"), Just("create"), Just("change"), Just("view"), Just("*")],
            prop_oneof![
                Just(""),
                Just("@org"),
                Just("@vault"),
                Just("@vault/v-1"),
                Just("@key"),
                Just("@key/k-1")
            ],
        )
            .prop_map(|(t, a, s)| format!("{t}:{a}{s}"))
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Permission::parse(&s);
            let _ = Requirement::parse(&s);
        }

        /// A grant that is within another never allows more than the other.
        #[test]
        fn narrowing_is_sound(a in arb_perm(), b in arb_perm(),
                              t in prop_oneof![Just("balances"), Just("key"), Just("audit")],
                              act in prop_oneof![Just("read"), Just("create"), Just("delete")],
                              tgt in 0usize..5) {
            let targets = [ORG, V1, V2, K1, V1K1];
            let (pa, pb) = (p(&a), p(&b));
            let req = r(&format!("{t}:{act}"));
            if pa.is_within(&pb) && pa.grants(&req, &targets[tgt]) {
                prop_assert!(pb.grants(&req, &targets[tgt]));
            }
        }

        /// An org grant for a type and action allows that action on every target;
        /// a scoped grant never allows an org-level route.
        #[test]
        fn scope_monotonic(a in arb_perm(), tgt in 0usize..5) {
            let targets = [ORG, V1, V2, K1, V1K1];
            let g = p(&a);
            let req = r("balances:read");
            if g.grants(&req, &ORG) {
                prop_assert!(g.grants(&req, &targets[tgt]));
            }
        }
    }
}
