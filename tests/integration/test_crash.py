#!/usr/bin/python3
"""Crash safety: SIGKILL the engine while it accepts a submission, while it
renders and while it delivers; restart it each time and wait for the end.

Checks:
  - the LMDB file is readable after every kill (mdb_stat) and the engine
    starts again;
  - a submission killed before its "ok" leaves nothing (or, if the ok was
    already sent, the whole campaign): never a partial campaign;
  - every contact is delivered at least once; the number delivered twice
    is printed and is not larger than what was in flight at the kills;
  - rendering resumes where it stopped: every contact is rendered once.

The kill moments depend on the machine's speed; what is asserted does not.
usage: test_crash.py CARTEIRO SINK [CONTACTS] [KILLS]
"""
import csv
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World, wait_until  # noqa: E402

CARTEIRO, SINK = map(os.path.abspath, sys.argv[1:3])
N = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
KILLS = int(sys.argv[4]) if len(sys.argv) > 4 else 2
ADDR, PORT = "127.10.3.1", 2526
MAX_ACTIVE = 200


def write_contacts(path, n, prefix):
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["email", "first_name"])
        for i in range(n):
            wr.writerow([f"{prefix}{i}@crash{i % 50}.test", "Conceição"])


def mdb_ok(spool):
    r = subprocess.run(["mdb_stat", "-a", spool], capture_output=True)
    return r.returncode == 0


def main():
    w = World("crash")
    rnd = random.Random(int(os.environ.get("CRASH_SEED", "1")))
    try:
        save = w.path("saved")
        os.mkdir(save)
        # Slow replies spread the campaign over seconds so kills land
        # in the middle of it.
        sink = w.start([SINK, "-l", f"{ADDR}:{PORT},delay=3", "--ready-file",
                 w.path("sink.ready"), "--save", save], "sink")
        w.wait_file(sink, "sink", w.path("sink.ready"))
        conf = f"""[route]
* = {ADDR}:{PORT}
[queue]
sync = group
max_active = {MAX_ACTIVE}
render_ahead = 300
[smtp]
tls = none
site_max_connections = 8
"""
        e = Engine(w, CARTEIRO, conf).start()
        spool = w.path("engine-spool")

        # 1. Kill while accepting a big submission.
        big = 60000
        write_contacts(w.path("big.csv"), big, "big")
        with open(w.path("big.json"), "w") as f:
            json.dump({"name": "big", "from": "L <l@loja.test>",
                       "subject": "x", "text": "y", "contacts": "big.csv",
                       "send_at": "2099-01-01T00:00:00Z"}, f)
        sub = subprocess.Popen([CARTEIRO, "submit", "-s", e.socket,
                                w.path("big.json")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.02, 0.15))
        e.kill()
        out, err = sub.communicate(timeout=30)
        acked = sub.returncode == 0
        check("LMDB readable after a kill during intake", mdb_ok(spool))
        e.start()
        st = e.req({"op": "status"})["campaigns"]
        check("no partial campaign after a kill during intake",
              (acked and len(st) == 1 and st[0]["total"] == big) or
              (not acked and st == []),
              f"acked={acked} {json.dumps(st)}")
        for c in st:
            e.req({"op": "cancel", "id": c["id"]})

        # 2. The campaign we follow through kills.
        write_contacts(w.path("c.csv"), N, "c")
        with open(w.path("c.json"), "w") as f:
            json.dump({"name": "crash", "from": "L <l@loja.test>",
                       "subject": "Olá {{first_name}}",
                       "text": "Oi {{first_name}}", "contacts": "c.csv"}, f)
        r = e.cli("submit", w.path("c.json"))
        cid = int(r.stdout.split()[0])
        in_flight = []
        for k in range(KILLS):
            # Kill at a random point: first while rendering is still
            # going (render_ahead keeps it spread), then while delivering.
            target = int(N * (k + 1) / (KILLS + 1) * rnd.uniform(0.6, 1.0))
            last = {}

            def progressed():
                s = e.req({"op": "status", "id": cid})
                last.update(s["campaigns"][0])
                last["inflight"] = s["engine"]["inflight"]
                return last["delivered"] >= target or \
                    last["state"] == "done"
            wait_until("progress", progressed, 120, 0.005)
            rendering = last["rendered"] < last["total"]
            e.kill()
            in_flight.append(last["inflight"])
            print(f"# kill {k + 1}: delivered {last['delivered']}, rendered "
                  f"{last['rendered']}/{last['total']}, in flight "
                  f"{last['inflight']}{' (rendering)' if rendering else ''}")
            check(f"LMDB readable after kill {k + 1}", mdb_ok(spool))
            e.start()
        final = e.wait_done(cid, 300)
        check("campaign finished after the kills", final["state"] == "done",
              json.dumps(final))
        check("every contact rendered exactly once",
              final["rendered"] == N and final["total"] == N,
              json.dumps(final))
        e.stop()

        # What the receiving side got.
        count = {}
        for p in glob.glob(os.path.join(save, "*.eml")):
            with open(p, "rb") as f:
                for line in f:
                    if not line.startswith(b"X-Sink-Envelope:"):
                        break
                    if b"RCPT TO:<" in line:
                        a = line.split(b"<", 1)[1].split(b">")[0].decode()
                        count[a] = count.get(a, 0) + 1
        want = {f"c{i}@crash{i % 50}.test" for i in range(N)}
        missing = want - set(count)
        dups = sum(v - 1 for a, v in count.items() if a in want)
        print(f"# delivered twice: {dups} (in flight at the kills: "
              f"{in_flight}, sum {sum(in_flight)})")
        check("every contact delivered at least once", not missing,
              f"{len(missing)} missing")
        check("duplicates bounded by what was in flight at the kills",
              dups <= sum(in_flight) + 8 * KILLS,
              f"{dups} > {sum(in_flight)}")
    finally:
        w.close()
    sys.exit(finish())


main()
