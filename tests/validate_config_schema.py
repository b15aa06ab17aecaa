#!/usr/bin/env python3
"""Validates portcullis YAML files against the JSON Schema their first line names.

Run by `cargo test --test schema` (tests/schema.rs); by hand:

    python3 tests/validate_config_schema.py config/portcullis.yaml config/credentials.yaml
    python3 tests/validate_config_schema.py --schema schema/portcullis.schema.json --expect-invalid bad.yaml

Each file must start with `# yaml-language-server: $schema=<path>` (the modeline editors
read), the path relative to the file, unless --schema gives the schema. The YAML is read
as YAML 1.2's core schema reads it, as portcullis and yaml-language-server do: a bare
date such as 2027-11-22 is a string. The validator is python-jsonschema's, for the draft
the schema declares. Prints one line per file; exits 1 if any file is not as expected.
"""
import argparse
import json
import os
import sys

import jsonschema
import yaml

MODELINE = "# yaml-language-server: $schema="


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's timestamp type: dates stay strings, as in YAML 1.2."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def schema_path(path, text):
    first = text.split("\n", 1)[0]
    if not first.startswith(MODELINE):
        raise ValueError(f"the first line is not `{MODELINE}…`: {first!r}")
    return os.path.normpath(os.path.join(os.path.dirname(path), first[len(MODELINE):].strip()))


def errors_of(schema, document):
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schema", help="validate against this schema instead of the modeline's")
    ap.add_argument("--expect-invalid", action="store_true", help="each file must be refused")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    failed = 0
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            sp = args.schema or schema_path(path, text)
            with open(sp, encoding="utf-8") as f:
                schema = json.load(f)
            document = yaml.load(text, Loader=Yaml12Loader)
            errors = errors_of(schema, document if document is not None else {})
        except Exception as e:  # a missing modeline or schema, YAML that does not parse
            print(f"FAIL {path}: {e}")
            failed += 1
            continue
        where = lambda e: "/".join(str(p) for p in e.absolute_path) or "(top)"
        if args.expect_invalid:
            if errors:
                print(f"ok   {path} refused by {sp}: {where(errors[0])}: {errors[0].message}")
            else:
                print(f"FAIL {path}: {sp} accepts it, but it should be refused")
                failed += 1
        elif errors:
            failed += 1
            for e in errors:
                print(f"FAIL {path}: {where(e)}: {e.message}")
        else:
            print(f"ok   {path} is valid against {sp}")
    print(f"{len(args.files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
