"""docs/api.yaml against the real server: every route is documented and every
documented operation is a route (both ways, from `kiln server
--list-routes`); the document is well-formed OpenAPI 3 (every $ref
resolves, every operation has a success answer and a unique operationId);
and a live server answers each documented operation (never "no such
endpoint" or 405), with errors in the documented shape."""
import json
import os
import re

import yaml

import kilntest
from kilnapi import Server
from kilntest import run

DOC = os.path.join(kilntest.SRC, "docs", "api.yaml")
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def documented(doc):
    ops = set()
    for path, item in doc["paths"].items():
        for method in item:
            if method in METHODS:
                ops.add((method.upper(), path))
    return ops


class ApiDocTest(kilntest.TempDirTestCase):
    def setUp(self):
        super().setUp()
        with open(DOC) as f:
            self.doc = yaml.safe_load(f)

    def test_routes_and_document_agree(self):
        r = run(["server", "--list-routes"])
        self.assertEqual(r.returncode, 0, r.stderr)
        routes = set()
        for line in r.stdout.splitlines():
            method, path = line.split()
            routes.add((method, path.replace("{path*}", "{path}")))
        ops = documented(self.doc)
        self.assertEqual(sorted(routes - ops), [], "routes missing from docs/api.yaml")
        self.assertEqual(sorted(ops - routes), [], "documented operations the server lacks")

    def test_document_is_well_formed(self):
        self.assertTrue(self.doc["openapi"].startswith("3."))
        refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(self.doc))
        self.assertTrue(refs)
        for ref in refs:
            node = self.doc
            self.assertTrue(ref.startswith("#/"), ref)
            for part in ref[2:].split("/"):
                self.assertIn(part, node, f"unresolved $ref {ref}")
                node = node[part]
        ids = []
        for path, item in self.doc["paths"].items():
            params = re.findall(r"{(\w+)}", path)
            for method, op in item.items():
                if method not in METHODS:
                    continue
                ids.append(op["operationId"])
                codes = [str(c) for c in op["responses"]]
                self.assertTrue(any(c.startswith("2") for c in codes), (method, path))
                declared = [p for p in op.get("parameters", []) + item.get("parameters", [])]
                names = set()
                for p in declared:
                    if "$ref" in p:
                        p = self.doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                    if p["in"] == "path":
                        names.add(p["name"])
                self.assertEqual(names, set(params), (method, path))
        self.assertEqual(len(ids), len(set(ids)), "duplicate operationId")

    def test_live_server_answers_every_operation(self):
        server = Server(os.path.join(self.tmp, "state")).start()
        self.addCleanup(server.stop)
        api = server.client()
        self.addCleanup(api.close)
        for method, path in sorted(documented(self.doc)):
            url = path.replace("{id}", "1").replace("{path}", "out/x.txt")
            body = None if method == "GET" else b"{}"
            status, headers, data = api.raw(method, url, body)
            self.assertNotEqual(status, 405, (method, path))
            if status >= 400:
                err = json.loads(data)["error"]
                self.assertEqual(set(err) >= {"code", "message"}, True, (method, path, err))
                self.assertFalse(err["message"].startswith("no such endpoint"), (method, path))


if __name__ == "__main__":
    kilntest.main()
