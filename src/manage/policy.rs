//! Who may do what on the management API (SPEC §9): pure functions of the actor's
//! effective permissions and the credential concerned. The handlers ask here, and the
//! console hides what these refuse.
use std::sync::Arc;

use crate::config::CredentialKind;
use crate::permission::{any_grants, Action, Permission, Requirement, Target};
use crate::store::Kind;

/// Who is calling: the credential that authenticated, its linked user and its effective
/// permissions as the snapshot in force has them.
#[derive(Debug, Clone)]
pub struct Actor {
    pub credential: Arc<str>,
    pub kind: CredentialKind,
    pub user: Option<Arc<str>>,
    pub grants: Arc<[Permission]>,
}

/// What the actor may do, as the console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Can {
    /// `api_access:read`: see every credential and request.
    pub read: bool,
    /// `api_access:change`: manage every credential.
    pub change: bool,
    /// `api_access:approve`: answer other people's requests.
    pub approve: bool,
    /// Linked to a user: list, create, rotate, disable, enable and delete that user's keys.
    pub own_keys: bool,
}

impl Actor {
    /// The name audit lines and requests carry: the linked user, else the credential.
    pub fn name(&self) -> &str {
        self.user.as_deref().unwrap_or(&self.credential)
    }

    fn holds(&self, action: Action) -> bool {
        let req = Requirement { rtype: Arc::from("api_access"), action };
        any_grants(&self.grants, &req, &Target::default())
    }

    pub fn can(&self) -> Can {
        Can {
            read: self.holds(Action::Read),
            change: self.holds(Action::Update) && self.holds(Action::Create) && self.holds(Action::Delete),
            approve: self.holds(Action::Approve),
            own_keys: self.user.is_some(),
        }
    }

    /// Whether the actor may change the credential of `kind` linked to `user`: anyone's
    /// with `api_access:change`, else only the API keys of the actor's own user.
    pub fn may_manage(&self, kind: Kind, user: Option<&str>) -> bool {
        self.can().change || self.owns(kind, user)
    }

    /// An API key linked to the actor's own user.
    pub fn owns(&self, kind: Kind, user: Option<&str>) -> bool {
        kind == Kind::ApiKey && self.user.is_some() && user == self.user.as_deref()
    }

    /// Whether the actor may see that credential.
    pub fn may_see(&self, kind: Kind, user: Option<&str>) -> bool {
        self.can().read || self.may_manage(kind, user)
    }

    /// The permissions of `given` the actor does not hold itself (no escalation: every
    /// permission given to a credential must be within one of the actor's own).
    pub fn not_held<'p>(&self, given: &'p [Permission]) -> Vec<&'p str> {
        given
            .iter()
            .filter(|p| !self.grants.iter().any(|a| p.is_within(a)))
            .map(|p| p.as_str())
            .collect()
    }
}

/// The `user` an API key created by `actor` gets: as asked with `api_access:change`;
/// else the actor's own user (given or omitted), and any other is refused.
pub fn key_user(actor: &Actor, asked: Option<&str>) -> Result<Option<String>, &'static str> {
    if actor.can().change {
        return Ok(asked.map(str::to_string));
    }
    match (asked, actor.user.as_deref()) {
        (None, Some(own)) => Ok(Some(own.to_string())),
        (Some(a), Some(own)) if a == own => Ok(Some(own.to_string())),
        (Some(_), Some(_)) => Err("without api_access:change a key can be created only for your own user"),
        (_, None) => Err("creating credentials needs api_access:change"),
    }
}

/// Whether `new` lets in an address `old` did not (`None`: every address).
pub fn widens_ips(old: Option<&[String]>, new: Option<&[String]>) -> bool {
    let parse = |l: &[String]| -> Vec<ipnet::IpNet> { l.iter().filter_map(|s| crate::config::validate::parse_net(s).ok()).collect() };
    match (old, new) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(o), Some(n)) => {
            let o = parse(o);
            parse(n).iter().any(|n| !o.iter().any(|o| o.contains(n)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(user: Option<&str>, grants: &[&str]) -> Actor {
        Actor {
            credential: Arc::from("console-key"),
            kind: CredentialKind::ApiKey,
            user: user.map(Arc::from),
            grants: grants.iter().map(|g| Permission::parse(g).unwrap()).collect(),
        }
    }
    fn perms(list: &[&str]) -> Vec<Permission> {
        list.iter().map(|g| Permission::parse(g).unwrap()).collect()
    }

    #[test]
    fn allows_read_change_and_approve_by_their_permissions() {
        let a = actor(None, &["api_access:read", "api_access:change", "api_access:approve"]);
        assert_eq!(a.can(), Can { read: true, change: true, approve: true, own_keys: false });
        assert!(actor(None, &["api_access:*"]).can().approve, "* includes approve");
        assert!(actor(None, &["*:*"]).can().change);
        assert!(a.may_manage(Kind::Client, None));
        assert_eq!(a.name(), "console-key");
    }

    #[test]
    fn denies_without_the_permissions_or_with_a_vault_scoped_one() {
        let a = actor(None, &["balances:read", "api_access:read@vault/v-1"]);
        assert_eq!(a.can(), Can { read: false, change: false, approve: false, own_keys: false });
        assert!(!actor(None, &["api_access:change"]).can().approve, "change is not approve");
        assert!(!actor(None, &["api_access:read"]).can().change);
        assert!(!a.may_see(Kind::ApiKey, None));
    }

    #[test]
    fn allows_a_user_its_own_keys_only() {
        let bob = actor(Some("bob"), &["balances:read"]);
        assert_eq!(bob.name(), "bob");
        assert!(bob.may_manage(Kind::ApiKey, Some("bob")));
        assert!(!bob.may_manage(Kind::ApiKey, Some("alice")));
        assert!(!bob.may_manage(Kind::ApiKey, None));
        assert!(!bob.may_manage(Kind::Client, Some("bob")), "clients are never own keys");
        assert_eq!(key_user(&bob, None), Ok(Some("bob".into())));
        assert_eq!(key_user(&bob, Some("bob")), Ok(Some("bob".into())));
        assert!(key_user(&bob, Some("alice")).is_err());
        assert!(key_user(&actor(None, &["balances:read"]), None).is_err());
        assert_eq!(key_user(&actor(None, &["api_access:change"]), Some("alice")), Ok(Some("alice".into())));
    }

    #[test]
    fn denies_escalation_and_allows_what_is_held() {
        let a = actor(None, &["api_access:change", "vault:change", "balances:read@vault/v-1", "transactions:read"]);
        assert!(a.not_held(&perms(&["vault:read", "balances:read@vault/v-1", "transactions:view"])).is_empty());
        assert_eq!(a.not_held(&perms(&["transactions:change", "balances:read"])), ["transactions:change", "balances:read"]);
        assert_eq!(a.not_held(&perms(&["balances:read@vault/v-2"])), ["balances:read@vault/v-2"]);
        assert!(actor(None, &["*:*"]).not_held(&perms(&["api_access:approve", "vault:*"])).is_empty());
    }

    #[test]
    fn widening_an_allowlist_is_any_new_address() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let old = l(&["10.0.0.0/8"]);
        assert!(!widens_ips(Some(&old), Some(&l(&["10.1.0.0/16"]))));
        assert!(widens_ips(Some(&old), Some(&l(&["10.0.0.0/8", "192.0.2.1"]))));
        assert!(widens_ips(Some(&old), None), "every address");
        assert!(!widens_ips(None, Some(&old)), "narrowing");
    }
}
