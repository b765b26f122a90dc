"""Helpers for tests of kiln's Prometheus endpoints: fetch /metrics, check it
with promtool, and parse the text format into samples."""
import re
import shutil
import subprocess
import urllib.request

import kilnapi

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def fetch(addr, path="/metrics", headers=None):
    """Returns (status, content type, text) of GET http://addr/path."""
    headers = dict(headers or {})
    if "Authorization" not in headers and kilnapi.TOKENS.get(addr):
        headers["Authorization"] = "Bearer " + kilnapi.TOKENS[addr]
    req = urllib.request.Request(f"http://{addr}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode(errors="replace")


def promtool_check(text):
    """Returns (ok, promtool's output) for `promtool check metrics` on text."""
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    return p.returncode == 0, p.stdout + p.stderr


def parse(text):
    """Returns {"types": {family: type}, "samples": [(name, {labels}, value)]}."""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"not a sample line: {line!r}")
        labels = {k: v.encode().decode("unicode_escape") for k, v in _LABEL.findall(m.group(3) or "")}
        samples.append((m.group(1), labels, float(m.group(4))))
    return {"types": types, "samples": samples}


def value(parsed, name, **labels):
    """The value of the one sample `name` whose labels include `labels`; None if absent."""
    found = [v for n, l, v in parsed["samples"]
             if n == name and all(l.get(k) == str(x) for k, x in labels.items())]
    if len(found) > 1:
        raise AssertionError(f"{name} {labels}: {len(found)} samples match")
    return found[0] if found else None


def total(parsed, name, **labels):
    """The sum of every sample `name` whose labels include `labels` (0 if none)."""
    return sum(v for n, l, v in parsed["samples"]
               if n == name and all(l.get(k) == str(x) for k, x in labels.items()))
