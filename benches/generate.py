#!/usr/bin/env python3
"""A config with COUNT API keys for the scale benchmarks (benches/memory.sh, benches/postgres.sh).

    generate.py WORK COUNT PORT file
    generate.py WORK COUNT PORT postgres PGPORT

Writes WORK/portcullis.yaml (listen on PORT, admin on PORT+1, production, 10 routes) and
WORK/credentials.yaml: COUNT keys, each with a role, a vault-scoped permission, two
allowed_ips entries, an expiry and a description. Key i's key is the string "mem-key-i";
key 0 may be used from 127.0.0.1 (benches/reload_load.sh sends it). With `postgres` the main config names the
PostgreSQL store (the URL in WORK/database-url) and credentials.yaml is the file to import.
"""
import hashlib
import sys

work, count, port, store = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(f"{work}/portcullis.yaml", "w") as f:
    f.write(f'listen: "127.0.0.1:{port}"\nupstream: "127.0.0.1:9"\nadmin_listen: "127.0.0.1:{port + 1}"\n'
            'environment: production\n')
    if store == "postgres":
        f.write("store:\n  kind: postgres\n  url_file: database-url\n  poll: 5\n")
        with open(f"{work}/database-url", "w") as u:
            u.write(f"postgres://postgres@127.0.0.1:{sys.argv[5]}/portcullis\n")
    else:
        f.write("credentials_file: credentials.yaml\n")
    f.write("routes:\n")
    for i in range(10):
        f.write(f'  - match: "GET /v1/r{i}/vaults/{{vault_id}}/balances"\n    require: "balances:read"\n')
with open(f"{work}/credentials.yaml", "w") as f:
    f.write("roles:\n  reporting: [\"transactions:read\", \"balances:read\"]\napi_keys:\n")
    for i in range(count):
        h = hashlib.sha256(f"mem-key-{i}".encode()).hexdigest()
        # Key 0 (the key string is "mem-key-0") may be used from loopback: the load benches.
        second = "127.0.0.1" if i == 0 else f"192.0.2.{i % 250}"
        f.write(f'  - name: key-{i}\n    key_hash: "sha256:{h}"\n    roles: [reporting]\n'
                f'    permissions: ["balances:read@vault/v-{i % 1000}"]\n'
                f'    allowed_ips: ["10.{i % 250}.0.0/16", "{second}"]\n'
                f'    expires: 2099-01-01\n    description: "generated key {i % 100000}"\n')
