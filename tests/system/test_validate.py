"""kiln validate: every example is valid, every bad spec gives exactly the
errors its .expected file holds, hostile input is refused cleanly, and the
docs' examples are the files in examples/."""
import glob
import json
import os
import random
import re

import kilntest
from kilntest import run

EXAMPLES = os.path.join(kilntest.SRC, "examples")
BAD = os.path.join(kilntest.HERE, "bad-specs")
DOC = os.path.join(kilntest.SRC, "docs", "job-spec.md")
LINE = re.compile(r"^[^:]+(:\d+:\d+)?: .+$")


def example_files():
    return sorted(glob.glob(os.path.join(EXAMPLES, "*.yaml")) +
                  glob.glob(os.path.join(EXAMPLES, "*.json")))


def bad_files():
    return sorted(f for f in os.listdir(BAD) if not f.endswith(".expected"))


class ExamplesTest(kilntest.TempDirTestCase):
    def test_there_are_examples(self):
        names = [os.path.basename(f) for f in example_files()]
        for want in ("ci.yaml", "eval-matrix.yaml", "gpu.yaml", "node-cache-secrets.yaml"):
            self.assertIn(want, names)

    def test_every_example_is_valid(self):
        for path in example_files():
            rel = os.path.relpath(path, kilntest.SRC)
            with self.subTest(rel):
                r = run(["validate", rel], cwd=kilntest.SRC)
                self.assertEqual(r.stderr, "")
                self.assertEqual(r.returncode, 0)
                self.assertRegex(r.stdout, r"^%s: ok \(\d+ jobs?\)\n$" % re.escape(rel))

    def test_all_examples_at_once(self):
        rels = [os.path.relpath(p, kilntest.SRC) for p in example_files()]
        r = run(["validate"] + rels, cwd=kilntest.SRC)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), len(rels))

    def test_matrix_example_expands(self):
        r = run(["validate", "-o", "json", os.path.join(EXAMPLES, "eval-matrix.yaml")])
        self.assertEqual(r.returncode, 0, r.stderr)
        jobs = json.loads(r.stdout)
        self.assertEqual([j["name"] for j in jobs], [
            "eval (small, arithmetic)", "eval (medium, arithmetic)",
            "eval (medium, summarise)", "eval (large, arithmetic, 5)",
            "eval (large, summarise, 5)"])
        self.assertEqual(jobs[3]["env"], {"MODEL": "large", "TASK": "arithmetic"})
        self.assertEqual(jobs[3]["steps"][0]["env"], {"SHOTS": "5"})
        self.assertEqual(jobs[0]["steps"][0]["env"], {"SHOTS": ""})
        self.assertEqual(jobs[4]["artifacts"], ["results/large-summarise.json"])
        self.assertEqual(jobs[4]["matrix-values"],
                         {"model": "large", "task": "summarise", "shots": "5"})

    def test_gpu_example(self):
        r = run(["validate", "-o", "json", os.path.join(EXAMPLES, "gpu.yaml")])
        self.assertEqual(r.returncode, 0, r.stderr)
        job = json.loads(r.stdout)[0]
        self.assertEqual(job["runs-on"], ["gpu", "gpu-count:2", "cuda-12"])
        self.assertEqual(job["resources"], {"cpus": 8, "memory": 32 << 30,
                                            "disk": 100 << 30, "pids": 0, "gpus": 2})

    def test_normalised_json_loads_back_identically(self):
        """Each normalised job is itself a spec that normalises to itself."""
        for path in example_files():
            r = run(["validate", "-o", "json", path])
            self.assertEqual(r.returncode, 0, r.stderr)
            jobs = json.loads(r.stdout)
            self.assertIsInstance(jobs, list)
            for i, job in enumerate(jobs):
                with self.subTest(path=path, job=i):
                    again = run(["validate", "-o", "json", "-"], input=json.dumps(job))
                    self.assertEqual(again.returncode, 0, again.stderr)
                    self.assertEqual(json.loads(again.stdout), [job])


class BadSpecsTest(kilntest.TempDirTestCase):
    def test_every_bad_spec_has_expected_output(self):
        files = bad_files()
        self.assertGreater(len(files), 15)
        for name in files:
            stem = os.path.splitext(name)[0]
            self.assertTrue(os.path.exists(os.path.join(BAD, stem + ".expected")), name)

    def test_bad_specs_give_exact_errors(self):
        for name in bad_files():
            with self.subTest(name):
                stem = os.path.splitext(name)[0]
                with open(os.path.join(BAD, stem + ".expected"), encoding="utf-8") as f:
                    want = f.read()
                r = run(["validate", name], cwd=BAD)
                self.assertEqual(r.returncode, 1)
                self.assertEqual(r.stdout, "")
                self.assertEqual(r.stderr, want)
                for line in r.stderr.splitlines():
                    self.assertRegex(line, LINE)

    def test_all_bad_specs_at_once(self):
        """Every file is reported, not only the first invalid one."""
        names = bad_files()
        r = run(["validate"] + names, cwd=BAD)
        self.assertEqual(r.returncode, 1)
        want = ""
        for name in names:
            with open(os.path.join(BAD, os.path.splitext(name)[0] + ".expected"),
                      encoding="utf-8") as f:
                want += f.read()
        self.assertEqual(r.stderr, want)


class HostileInputTest(kilntest.TempDirTestCase):
    def check_one_error(self, path, want):
        r = run(["validate", os.path.basename(path)], cwd=self.tmp)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertEqual(r.stderr, want)

    def test_file_over_one_mib(self):
        path = self.write("big.yaml", "name: big\nsteps: [{run: x}]\n" + "#" * (1 << 20))
        self.check_one_error(path, "big.yaml: the file is larger than 1 MiB; a spec may hold "
                                   "at most 1048576 bytes\n")
        with open(path, "rb") as f:
            r = run(["validate", "-"], input=f.read().decode())
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, "<stdin>: the file is larger than 1 MiB; a spec may hold "
                                   "at most 1048576 bytes\n")

    def test_exactly_one_mib_is_read(self):
        head = "name: ok\nsteps: [{run: x}]\n"
        path = self.write("edge.yaml", head + "#" * ((1 << 20) - len(head)))
        r = run(["validate", path])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_deep_nesting(self):
        path = self.write("deep.yaml", "name: x\nenv: " + "[" * 100000 + "]" * 100000 + "\n")
        self.check_one_error(path, "deep.yaml:2:69: nesting deeper than 64 levels; a job spec "
                                   "needs a handful\n")
        path = self.write("deepmap.yaml", "".join("  " * i + "k:\n" for i in range(200)))
        self.check_one_error(path, "deepmap.yaml:65:129: nesting deeper than 64 levels; a job "
                                   "spec needs a handful\n")

    def test_binary_garbage(self):
        rnd = random.Random(7)
        for i in range(20):
            with self.subTest(i):
                path = self.write("garbage.yaml", bytes(rnd.randrange(256) for _ in range(4096)))
                r = run(["validate", path])
                self.assertEqual(r.returncode, 1)
                self.assertEqual(r.stdout, "")
                self.assertRegex(r.stderr, r"^garbage\.yaml|^%s" % re.escape(path))
                for line in r.stderr.splitlines():
                    self.assertRegex(line, LINE)

    def test_printable_garbage(self):
        """Random YAML-ish text: an error or a job, never a crash."""
        rnd = random.Random(11)
        alphabet = "ab:- \n[]{},'\"&*!|>#%@`?~\t0123456789${}."
        for i in range(40):
            text = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 400)))
            r = run(["validate", "-"], input=text)
            self.assertIn(r.returncode, (0, 1), (text, r.stderr))
            for line in r.stderr.splitlines():
                self.assertRegex(line, LINE)

    def test_alias_bomb(self):
        """A billion-laughs document with 30 levels is refused at once."""
        lines = ["name: x", "steps: [{run: x}]", 'a0: &a0 "lol"']
        for i in range(1, 30):
            lines.append("a%d: &a%d [%s]" % (i, i, ", ".join(["*a%d" % (i - 1)] * 10)))
        path = self.write("lol.yaml", "\n".join(lines) + "\n")
        r = run(["validate", path], timeout=20)
        self.assertEqual(r.returncode, 1)
        self.assertIn('lol.yaml:4:10: YAML aliases are not supported (found "*a0"); write the '
                      "value out in full\n", r.stderr)

    def test_matrix_past_limit(self):
        axes = {"a": list(range(20)), "b": list(range(20))}
        path = self.write("m.json", json.dumps({"name": "m", "steps": [{"run": "x"}],
                                                "matrix": axes}))
        self.check_one_error(path, "m.json:1:50: matrix: expands to 400 jobs (20 x 20); the "
                                   "limit is 256\n")

    def test_many_errors_are_capped(self):
        text = "name: x\nsteps: [{run: x}]\nenv:\n" + "".join("  %d: x\n" % i for i in range(200))
        r = run(["validate", "-"], input=text)
        self.assertEqual(r.returncode, 1)
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 101)
        self.assertEqual(lines[-1], "<stdin>: too many errors; stopped after the first 100")


class CommandTest(kilntest.TempDirTestCase):
    GOOD = "name: good\nsteps:\n  - run: make\n"

    def test_stdin(self):
        r = run(["validate", "-"], input=self.GOOD)
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "<stdin>: ok (1 job)\n", ""))
        r = run(["validate", "-"], input="name: x\nstep: []\n")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr,
                         '<stdin>:1:1: missing required key "steps" (e.g. steps: [{run: make '
                         'test}])\n'
                         '<stdin>:2:1: unknown key "step" (did you mean "steps"?)\n')

    def test_json_output_is_an_array_of_all_files(self):
        a = self.write("a.yaml", self.GOOD)
        b = self.write("b.yaml", "name: b\nmatrix: {n: [1, 2]}\nsteps: [{run: x}]\n")
        r = run(["validate", "-o", "json", a, b])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([j["name"] for j in json.loads(r.stdout)], ["good", "b (1)", "b (2)"])
        r = run(["validate", "--output=json", a])
        self.assertEqual(len(json.loads(r.stdout)), 1)

    def test_no_partial_json_output(self):
        good = self.write("good.yaml", self.GOOD)
        bad = self.write("bad.yaml", "name: x\n")
        r = run(["validate", "-o", "json", good, bad])
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertIn("bad.yaml:1:1: missing required key", r.stderr)

    def test_text_reports_each_file(self):
        good = self.write("good.yaml", self.GOOD)
        bad = self.write("bad.yaml", "name: x\n")
        r = run(["validate", "good.yaml", "bad.yaml"], cwd=self.tmp)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "good.yaml: ok (1 job)\n")
        self.assertTrue(os.path.exists(good) and os.path.exists(bad))

    def test_quiet(self):
        good = self.write("good.yaml", self.GOOD)
        r = run(["validate", "-q", good])
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "", ""))
        r = run(["validate", "-q", "-o", "json", good])
        self.assertEqual((r.returncode, r.stdout), (0, ""))
        r = run(["validate", "--quiet", "-"], input="name: x\n")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertNotEqual(r.stderr, "")

    def test_unreadable_files(self):
        r = run(["validate", "nosuch.yaml"], cwd=self.tmp)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, "kiln validate: cannot read 'nosuch.yaml': No such file or "
                                   "directory\n")
        r = run(["validate", self.tmp])
        self.assertEqual(r.returncode, 1)
        self.assertIn("Is a directory", r.stderr)

    def test_usage_errors(self):
        for args, msg in [
            (["validate"], "no files given"),
            (["validate", "-o", "yaml", "x"], "unknown output format 'yaml'"),
            (["validate", "-o"], "-o needs a format"),
            (["validate", "--frob", "x"], "unknown option"),
            (["validate", "-", "-"], "can be given only once"),
        ]:
            with self.subTest(args):
                r = run(args)
                self.assertEqual(r.returncode, 2)
                self.assertIn(msg, r.stderr)
                self.assertIn("kiln help validate", r.stderr)

    def test_help(self):
        for args in (["validate", "--help"], ["help", "validate"]):
            r = run(args)
            self.assertEqual(r.returncode, 0)
            self.assertIn("usage: kiln validate [-o text|json] [-q] FILE...", r.stdout)
        r = run(["--help"])
        self.assertIn("validate", r.stdout)


class DocsTest(kilntest.TempDirTestCase):
    """docs/job-spec.md shows the example files, and shows them as they are."""

    def blocks(self):
        with open(DOC, encoding="utf-8") as f:
            text = f.read()
        pat = re.compile(r"<!-- example: (\S+) -->\n```(?:yaml|json)\n(.*?)```\n", re.S)
        return pat.findall(text), text

    def test_doc_examples_are_the_files(self):
        blocks, _ = self.blocks()
        self.assertGreaterEqual(len(blocks), 4)
        for rel, body in blocks:
            with self.subTest(rel):
                path = os.path.join(kilntest.SRC, rel)
                self.assertTrue(os.path.exists(path), rel)
                with open(path, encoding="utf-8") as f:
                    self.assertEqual(body, f.read())
                r = run(["validate", rel], cwd=kilntest.SRC)
                self.assertEqual(r.returncode, 0, r.stderr)

    def test_every_example_is_in_the_doc(self):
        blocks, _ = self.blocks()
        shown = {rel for rel, _ in blocks}
        for path in example_files():
            self.assertIn(os.path.relpath(path, kilntest.SRC), shown)

    def test_doc_error_examples_are_real(self):
        """Each `kiln validate` transcript in the doc is what kiln prints."""
        _, text = self.blocks()
        pat = re.compile(r"<!-- transcript: (\S+) -->\n```\n\$ kiln validate (\S+)\n(.*?)```\n",
                         re.S)
        found = pat.findall(text)
        self.assertGreaterEqual(len(found), 1)
        for rel, arg, want in found:
            with self.subTest(rel):
                r = run(["validate", arg], cwd=os.path.join(kilntest.SRC, rel))
                self.assertEqual(r.stdout + r.stderr, want)


if __name__ == "__main__":
    kilntest.main()
