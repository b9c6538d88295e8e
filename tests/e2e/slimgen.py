#!/usr/bin/env python3
"""slimgen.py — a deterministic git repository shaped like the wepppy monolith, for `imgbuild slim`.

usage: slimgen.py [--commits N] [--data-mb M] [--seed S] DEST

Writes a non-bare git repository at DEST (which must not exist or be empty) by piping one
`git fast-import` stream, then checks out main. Same arguments, same commit ids: names, dates,
messages and contents all come from the seed. Prints nothing on success.

What is in it (tests/e2e/t0200-slim.sh and bench/slim.sh rely on these):
- code: Dockerfile, requirements.txt, README.md, docker/compose.yaml, docker/Dockerfile (a symlink),
  scripts/run_rq_worker.sh (mode 755), wepppy/nodb/*.py, wepppy/weppcloud/{app.py,routes/*.py}, and
  next to the data, code a `--path` prefix must not catch: wepppy/climates/cligen/county_db_index.py,
  wepppy/soils/ssurgo/data_loader.py, wepppy/soils/ssurgo/data.md;
- data, the two paths a slim strips (DATA_DIRS): wepppy/climates/cligen/county_db/ (observed .cli files,
  one named "Doña Ana.cli", one "Hood River.cli") and wepppy/soils/ssurgo/data/ (statsgo .sol files,
  spatial rasters, tile databases, an executable rebuild.sh; "Doña Ana.cli" and statsgo/612345.sol are at every tip); pseudo-random, incompressible bytes of
  varying sizes, summing over every version in history to about --data-mb MB; files are modified, added
  and deleted over time, so most paths have several versions;
- main: a root commit, code commits, data-only commits ("Refresh …", "Add …", "Retire …"), mixed
  commits; one originally empty commit ("Empty commit to trigger CI", its parent a code commit);
- feature: real code changes (and one data file, FEATURE_DATA_FILE, changed only there), merged into main
  by "Merge branch 'feature'"; main changes that data file again afterwards and deletes another one
  (RETIRED_DATA_FILE) that the feature tip still has, so the tips of main and feature disagree;
- data-refresh: commits that only touch data, merged into main non-fast-forward by
  "Merge branch 'data-refresh'" after main moved on: that merge becomes degenerate once data is stripped;
- climate-2024: two code commits, then two data-only commits at its tip (never merged);
- tags: v0.9 (lightweight, on a code commit), v1.0 (annotated, on the feature merge), v1.1-data
  (annotated, on a data-only commit of main).
Messages are UTF-8 and contain no word of 7 or more hex digits (history rewriters may rewrite those).
"""
import argparse
import os
import random
import re
import subprocess
import sys

DATA_DIRS = ("wepppy/climates/cligen/county_db", "wepppy/soils/ssurgo/data")
CDB = DATA_DIRS[0] + "/observed_climates"
SSD = DATA_DIRS[1]
FEATURE_DATA_FILE = CDB + "/ID/Latah.cli"
RETIRED_DATA_FILE = CDB + "/OR/Hood River.cli"
UTF8_DATA_FILE = CDB + "/NM/Doña Ana.cli"  # at every tip: a non-ASCII path to export
SOL_DATA_FILE = SSD + "/statsgo/612345.sol"
KEEP = (FEATURE_DATA_FILE, RETIRED_DATA_FILE, UTF8_DATA_FILE, SOL_DATA_FILE)  # never retired by a random data commit

PEOPLE = (  # name, email, tz
    ("Rosa Delgado", "rosa@wepp.example", "-0800"),
    ("Kenji Watanabe", "kenji@wepp.example", "-0700"),
    ("Zoë Müller", "zoe@wepp.example", "+0100"),
    ("Amara Okafor", "amara@wepp.example", "-0800"),
)
COUNTIES = {
    "ID": ["Latah", "Benewah", "Kootenai", "Shoshone", "Nez Perce", "Clearwater", "Idaho", "Boise", "Valley"],
    "WA": ["Whitman", "Spokane", "Asotin", "Garfield", "Columbia", "Walla Walla", "Yakima", "Kittitas"],
    "OR": ["Hood River", "Wasco", "Umatilla", "Union", "Wallowa", "Baker", "Grant", "Malheur"],
    "NM": ["Doña Ana", "Sierra", "Socorro", "Catron", "Grant", "Luna", "Otero"],
    "CA": ["Modoc", "Lassen", "Plumas", "Sierra", "Nevada", "Placer", "El Dorado"],
    "MT": ["Missoula", "Ravalli", "Mineral", "Sanders", "Lake", "Flathead"],
}
WORDS = ("climate soil hillslope watershed channel runoff erosion sediment landuse management station "
         "grid tile raster forecast yield crop region sensor prism daymet gridmet cligen statsgo ssurgo "
         "mukey horizon slope flowpath outlet subcatchment topaz wepp ron nodb config cache session "
         "request handler worker queue task job event payload record batch index query filter").split()
MODULES = ("wepppy/nodb/base.py", "wepppy/nodb/climate.py", "wepppy/nodb/soils.py", "wepppy/nodb/watershed.py",
           "wepppy/nodb/landuse.py", "wepppy/nodb/wepp.py", "wepppy/nodb/ron.py", "wepppy/weppcloud/app.py",
           "wepppy/weppcloud/routes/browse.py", "wepppy/weppcloud/routes/run.py",
           "wepppy/weppcloud/routes/usersum.py", "wepppy/climates/cligen/cligen.py",
           "wepppy/climates/cligen/county_db_index.py", "wepppy/soils/ssurgo/ssurgo.py",
           "wepppy/soils/ssurgo/data_loader.py")
HEX_WORD = re.compile(r"\b[0-9a-f]{7,}\b")


class Gen:
    def __init__(self, commits, data_mb, seed):
        self.rng = random.Random(f"slimgen:{seed}")
        self.seed = seed
        self.n = max(commits, 40)
        self.budget = max(int(data_mb * 1024 * 1024), 64 * 1024)
        self.ops = []          # the plan: ("blob", vid) / ("commit", dict) / ("tag", …) / ("reset", …)
        self.weights = []      # data version id -> size weight
        self.vpaths = []       # data version id -> path (for its header line)
        self.state = {}        # branch -> {path: (mode, kind, value)}; kind "code" (text) or "data" (version id)
        self.tip = {}          # branch -> commit mark
        self.mark = 0
        self.when = 1546300800  # 2019-01-01, then strictly increasing
        self.ncommits = 0
        self.serial = 0

    # ------------------------------------------------------------------ plan helpers
    def next_mark(self):
        self.mark += 1
        return self.mark

    def ident(self):
        return "_".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 3)))

    def code_block(self):
        r = self.rng
        name = self.ident()
        body = []
        for _ in range(r.randint(3, 12)):
            k = r.randrange(6)
            if k == 0:
                body.append(f"    {self.ident()} = self.{self.ident()}.get({self.ident()!r}, {r.randint(0, 9999)})")
            elif k == 1:
                body.append(f"    if {self.ident()} is None:\n        raise ValueError('{self.ident()} missing')")
            elif k == 2:
                body.append(f"    # {' '.join(r.choice(WORDS) for _ in range(r.randint(3, 10)))}")
            elif k == 3:
                body.append(f"    for {self.ident()} in self.{self.ident()}:\n        self.{self.ident()}()")
            elif k == 4:
                body.append(f"    with self.locked():\n        self.{self.ident()} = {r.random():.4f}")
            else:
                body.append(f"    return {self.ident()}({self.ident()})")
        return f"def {name}(self, {self.ident()}=None):\n" + "\n".join(body) + "\n"

    def new_data(self, path, big=False):
        vid = len(self.weights)
        w = self.rng.lognormvariate(0.6 if big else 0.0, 0.9)
        self.weights.append(min(w, 12.0))
        self.vpaths.append(path)
        self.ops.append(("blob", vid))
        return vid

    def data_paths(self, st):
        return sorted(p for p, v in st.items() if v[1] == "data")

    def new_data_path(self, st):
        r = self.rng
        while True:
            if r.random() < 0.6:
                state = r.choice(sorted(COUNTIES))
                county = r.choice(COUNTIES[state])
                if r.random() < 0.5:
                    county = f"{county} {r.randint(2, 99)}"
                p = f"{CDB}/{state}/{county}.cli"
            else:
                k = r.randrange(3)
                if k == 0:
                    p = f"{SSD}/statsgo/{r.randint(100000, 999999)}.sol"
                elif k == 1:
                    p = f"{SSD}/statsgo/build/spatial/statsgo_{r.choice(WORDS)}_{r.randint(1, 99)}.tif"
                else:
                    p = f"{SSD}/surgo/tile_{r.randint(1, 9999)}.db"
            if p not in st and p != RETIRED_DATA_FILE:
                return p

    def person(self):
        return self.rng.choice(PEOPLE)

    def commit(self, branch, changes, msg, merge=None, who=None):
        """changes: {path: (mode, kind, value) or None for a delete}, applied to branch's state."""
        assert not HEX_WORD.search(msg), msg
        st = self.state[branch]
        for p, v in changes.items():
            if v is None:
                st.pop(p, None)
            else:
                st[p] = v
        self.when += self.rng.randint(900, 2 * 86400)
        who = who or self.person()
        m = self.next_mark()
        self.ops.append(("commit", dict(ref=f"refs/heads/{branch}", mark=m, who=who, when=self.when, msg=msg,
                                        parent=self.tip.get(branch), merge=merge, changes=changes)))
        self.tip[branch] = m
        self.ncommits += 1
        return m

    def branch(self, name, at):
        self.state[name] = dict(self.state[at])
        self.tip[name] = self.tip[at]

    # ------------------------------------------------------------------ commit kinds
    def code_change(self, st, nfiles=None):
        r = self.rng
        changes = {}
        for _ in range(nfiles or r.choice((1, 1, 1, 2, 2, 3))):
            p = r.choice(MODULES)
            blocks = list(st[p][2]) if p in st else [f'"""{p}"""\n']
            if len(blocks) > 1 and r.random() < 0.6:
                blocks[r.randrange(1, len(blocks))] = self.code_block()
            else:
                blocks.insert(r.randint(1, len(blocks)), self.code_block())
            if len(blocks) > 40:
                del blocks[r.randrange(1, len(blocks))]
            changes[p] = ("100644", "code", tuple(blocks))
            st = dict(st, **{p: changes[p]})
        if r.random() < 0.08:
            req = st["requirements.txt"][2]
            changes["requirements.txt"] = ("100644", "code", req + (f"{r.choice(WORDS)}-{r.choice(WORDS)}=="
                                                                    f"{r.randint(0, 9)}.{r.randint(0, 30)}\n",))
        subj = r.choice(("nodb: ", "weppcloud: ", "climates: ", "soils: ", "routes: ", ""))
        verb = r.choice(("fix", "handle", "refactor", "speed up", "log", "validate", "cache", "document"))
        msg = f"{subj}{verb} {self.ident().replace('_', ' ')}"
        if r.random() < 0.25:
            msg += r.choice((" (Zoë's review)", " — °C not °F", " for Doña Ana", " ✓"))
        if r.random() < 0.3:
            msg += f"\n\nThe {self.ident().replace('_', ' ')} path was slow for runs with {r.randint(2, 500)} hillslopes."
        return changes, msg + "\n"

    def data_change(self, st, nops=None):
        r = self.rng
        changes, verbs = {}, []
        present = self.data_paths(st)
        for _ in range(nops or r.choice((1, 1, 2, 2, 3))):
            k = r.random()
            if k < 0.5 and present:
                p = r.choice(present)
                changes[p] = ((st.get(p) or changes[p])[0], "data", self.new_data(p))
                verbs.append("Refresh")
            elif k < 0.85 or len(present) < 8:
                p = self.new_data_path(dict(st, **{q: v for q, v in changes.items() if v}))
                changes[p] = ("100644", "data", self.new_data(p))
                present.append(p)
                verbs.append("Add")
            else:
                p = r.choice(present)
                if p in KEEP:
                    continue
                if p in st:
                    changes[p] = None
                else:
                    del changes[p]  # added by this very commit: never mind
                present.remove(p)
                verbs.append("Retire")
        if not changes:
            return self.data_change(st, 1)
        where = ("county_db" if all(q.startswith(DATA_DIRS[0]) for q in changes) else
                 "ssurgo" if all(q.startswith(DATA_DIRS[1]) for q in changes) else "climate and soils data")
        return changes, f"{verbs[0]} {where}: {os.path.basename(next(iter(changes))).rsplit('.', 1)[0]}\n"

    def regular(self, branch, code_only=False):
        r = self.rng
        st = self.state[branch]
        k = r.random()
        if code_only or k < 0.70:
            ch, msg = self.code_change(st)
        elif k < 0.92:
            ch, msg = self.data_change(st)
        else:
            ch, msg = self.code_change(st)
            dch, _ = self.data_change(st)
            ch.update(dch)
            msg = msg.rstrip("\n") + " and its data\n"
        return self.commit(branch, ch, msg)

    def merge(self, into, other, base_state, msg):
        """A merge of other into `into`: the paths other changed since base_state, applied to into's tree."""
        o = self.state[other]
        changes = {p: v for p, v in o.items() if base_state.get(p) != v}
        changes.update({p: None for p in base_state if p not in o})
        return self.commit(into, changes, msg, merge=self.tip[other], who=PEOPLE[0])

    # ------------------------------------------------------------------ the history
    def plan(self):
        r, n = self.rng, self.n
        feat_len = max(4, n // 20)
        refresh_len = max(3, n // 40)
        clim_code, clim_data = 2, 2
        side = feat_len + refresh_len + clim_code + clim_data + 2  # + 2 merges
        main_len = n - side          # main commits other than the merges (root included)
        cut = [int(main_len * f) for f in (0.30, 0.50, 0.62, 0.80)]

        # root: the import of the whole tree
        st = {}
        self.state["main"] = st
        root = {
            "README.md": ("100644", "code", ("# wepppy\n\nWEPPcloud: WEPP erosion modelling for the web.\n",)),
            "Dockerfile": ("100644", "code", ("FROM python:3.11-slim\nWORKDIR /app\nCOPY requirements.txt .\n"
                                              "RUN pip install -r requirements.txt\nCOPY wepppy/ wepppy/\n"
                                              'CMD ["gunicorn", "wepppy.weppcloud.app:app"]\n',)),
            "requirements.txt": ("100644", "code", ("flask==3.0.3\nrq==1.16.2\nredis==5.0.8\n"
                                                    "gunicorn==22.0.0\nnumpy==1.26.4\n",)),
            "docker/compose.yaml": ("100644", "code", ("services:\n  weppcloud:\n    build: ..\n    volumes:\n"
                                                       "      - /geodata:/geodata:ro\n",)),
            "docker/Dockerfile": ("120000", "code", ("../Dockerfile",)),
            "scripts/run_rq_worker.sh": ("100755", "code", ("#!/bin/sh\nexec rq worker -c wepppy.rq.settings\n",)),
            "wepppy/__init__.py": ("100644", "code", ('"""wepppy"""\n',)),
            "wepppy/nodb/__init__.py": ("100644", "code", ("from .base import NoDbBase\n",)),
            "wepppy/soils/ssurgo/data.md": ("100644", "code", ("SSURGO data now lives on /geodata.\n",)),
        }
        for p in MODULES:
            root[p] = ("100644", "code", (f'"""{p}"""\n',) + tuple(self.code_block() for _ in range(r.randint(2, 6))))
        nfiles0 = max(16, n // 10)
        for p in KEEP:
            root[p] = ("100644", "data", self.new_data(p, big=True))
        while sum(1 for v in root.values() if v[1] == "data") < nfiles0:
            p = self.new_data_path(root)
            root[p] = ("100644", "data", self.new_data(p, big=True))
        rebuild = f"{SSD}/statsgo/build/rebuild.sh"
        root[rebuild] = ("100755", "data", self.new_data(rebuild))
        self.commit("main", root, "Initial import of wepppy\n\nCode, climate (county_db) and soils (ssurgo) data.\n",
                    who=PEOPLE[0])

        made = 1
        while made < cut[0] - 1:
            self.regular("main"); made += 1
        self.regular("main", code_only=True); made += 1
        self.ops.append(("reset", "refs/tags/v0.9", self.tip["main"]))

        # feature: code (and one data file) interleaved with main; the originally empty commit on main
        self.branch("feature", "main")
        base = dict(self.state["main"])
        fdone, empty_done = 0, False
        while fdone < feat_len or made < cut[1]:
            if fdone < feat_len and (made >= cut[1] or r.random() < 0.5):
                st = self.state["feature"]
                ch, msg = self.code_change(st, nfiles=2)
                if fdone == feat_len // 2:
                    ch[FEATURE_DATA_FILE] = ("100644", "data", self.new_data(FEATURE_DATA_FILE))
                    msg = "nodb.climate: use the corrected Latah station\n"
                self.commit("feature", ch, "feature: " + msg)
                fdone += 1
            elif not empty_done and made >= (cut[0] + cut[1]) // 2:
                self.regular("main", code_only=True)
                self.commit("main", {}, "Empty commit to trigger CI\n")
                made += 2
                empty_done = True
            else:
                self.regular("main"); made += 1
        if not empty_done:
            self.regular("main", code_only=True)
            self.commit("main", {}, "Empty commit to trigger CI\n")
            made += 2
        m = self.merge("main", "feature", base, "Merge branch 'feature'\n\nClimate and soils refactor.\n")
        self.ops.append(("tag", "v1.0", m, PEOPLE[0], self.when + 60, "WEPPcloud 1.0 — first release ✓\n"))

        # main moves on; the feature tip keeps old versions of two data files
        st = self.state["main"]
        self.commit("main", {FEATURE_DATA_FILE: ("100644", "data", self.new_data(FEATURE_DATA_FILE))},
                    "Refresh county_db: Latah observed climate for 2023\n")
        self.ops.append(("tag", "v1.1-data", self.tip["main"], PEOPLE[1], self.when + 60,
                         "Data release 1.1: observed climates for 2023\n"))
        self.regular("main", code_only=True)
        self.commit("main", {RETIRED_DATA_FILE: None}, "Retire county_db: Hood River (station moved)\n")
        made += 3
        while made < cut[2]:
            self.regular("main"); made += 1

        # data-refresh: data only, merged non-fast-forward after main moved on
        self.branch("data-refresh", "main")
        base = dict(self.state["main"])
        rdone, moved = 0, False
        while rdone < refresh_len or not moved:
            if rdone < refresh_len and (moved or r.random() < 0.6):
                ch, msg = self.data_change(self.state["data-refresh"])
                ch.pop(FEATURE_DATA_FILE, None)
                if not ch:
                    continue
                self.commit("data-refresh", ch, "data-refresh: " + msg)
                rdone += 1
            else:
                self.regular("main", code_only=True); made += 1
                moved = True
        self.merge("main", "data-refresh", base, "Merge branch 'data-refresh'\n")
        while made < cut[3]:
            self.regular("main"); made += 1

        # climate-2024: ends in data-only commits, never merged
        self.branch("climate-2024", "main")
        for i in range(clim_code + clim_data):
            st = self.state["climate-2024"]
            if i < clim_code:
                ch, msg = self.code_change(st)
                self.commit("climate-2024", ch, "climate-2024: " + msg)
            else:
                ch, msg = self.data_change(st, nops=2)
                self.commit("climate-2024", ch, "climate-2024: " + msg)
            if r.random() < 0.5:
                self.regular("main"); made += 1
        while made < main_len - 1:
            self.regular("main"); made += 1
        self.regular("main", code_only=True)

    # ------------------------------------------------------------------ the stream
    def emit(self, out):
        total_w = sum(self.weights)
        sizes = [max(256, int(self.budget * w / total_w)) for w in self.weights]
        w = out.write

        def data(b):
            w(b"data %d\n" % len(b))
            w(b)
            w(b"\n")

        blob_mark = {}
        w(b"feature done\n")
        for op in self.ops:
            if op[0] == "blob":
                vid = op[1]
                m = self.next_mark()
                blob_mark[vid] = m
                rng = random.Random(f"slimgen:{self.seed}:data:{vid}")
                head = (f"# {self.vpaths[vid]} version {vid}\n").encode()
                size = sizes[vid]
                if self.vpaths[vid].endswith(".sh"):
                    body = b"#!/bin/sh\n" + head + b"set -e\n# " + rng.randbytes(size).hex()[:size].encode() + b"\n"
                else:
                    body = head + rng.randbytes(max(size - len(head), 0))
                w(b"blob\nmark :%d\n" % m)
                data(body)
            elif op[0] == "commit":
                c = op[1]
                name, email, tz = c["who"]
                w(f"commit {c['ref']}\nmark :{c['mark']}\n".encode())
                w(f"author {name} <{email}> {c['when']} {tz}\n".encode())
                w(f"committer {name} <{email}> {c['when']} {tz}\n".encode())
                data(c["msg"].encode())
                if c["parent"]:
                    w(b"from :%d\n" % c["parent"])
                if c["merge"]:
                    w(b"merge :%d\n" % c["merge"])
                for p in sorted(c["changes"]):
                    v = c["changes"][p]
                    if v is None:
                        w(f"D {p}\n".encode())
                    elif v[1] == "data":
                        w(f"M {v[0]} :{blob_mark[v[2]]} {p}\n".encode())
                    else:
                        w(f"M {v[0]} inline {p}\n".encode())
                        data("\n".join(v[2]).encode())
                w(b"\n")
            elif op[0] == "reset":
                w(f"reset {op[1]}\nfrom :{op[2]}\n\n".encode())
            elif op[0] == "tag":
                _, tag, target, (name, email, tz), when, msg = op
                assert not HEX_WORD.search(msg), msg
                w(f"tag {tag}\nfrom :{target}\ntagger {name} <{email}> {when} {tz}\n".encode())
                data(msg.encode())
        w(b"done\n")


def main():
    ap = argparse.ArgumentParser(description="Generate a wepppy-shaped git repository for imgbuild slim tests.")
    ap.add_argument("--commits", type=int, default=60, help="about this many commits (at least 40)")
    ap.add_argument("--data-mb", type=float, default=3.0, help="MB of data blobs over all history")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("dest")
    a = ap.parse_args()
    if os.path.exists(a.dest) and os.listdir(a.dest):
        sys.exit(f"slimgen.py: {a.dest}: exists and is not empty")
    g = Gen(a.commits, a.data_mb, a.seed)
    g.plan()
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
    subprocess.run(["git", "init", "-q", "-b", "main", a.dest], check=True, env=env)
    # fast-import mallocs and frees large buffers per commit; glibc's default trimming hands them back to
    # the kernel each time, which costs a TLB shootdown on these VMs (7x slower at 3,000 commits).
    fenv = dict(env, GLIBC_TUNABLES="glibc.malloc.trim_threshold=536870912:glibc.malloc.top_pad=67108864")
    fi = subprocess.Popen(["git", "-C", a.dest, "fast-import", "--quiet"], stdin=subprocess.PIPE, env=fenv)
    try:
        g.emit(fi.stdin)
        fi.stdin.close()
    except BrokenPipeError:
        pass
    if fi.wait() != 0:
        sys.exit("slimgen.py: git fast-import failed")
    subprocess.run(["git", "-C", a.dest, "reset", "-q", "--hard", "main"], check=True, env=env)


if __name__ == "__main__":
    main()
