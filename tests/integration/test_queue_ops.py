#!/usr/bin/python3
"""Operator commands on the queue, through the `carteiro` command line:
queue list/show/retry/delete, pause/resume/cancel (and that they survive a
restart), send_at, and the suppression list.

usage: test_queue_ops.py CARTEIRO SINK
"""
import csv
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World, wait_until  # noqa: E402

CARTEIRO, SINK = map(os.path.abspath, sys.argv[1:3])
ADDR, PORT = "127.10.4.1", 2527


def main():
    w = World("queueops")
    try:
        sink = w.start([SINK, "-l", f"{ADDR}:{PORT}", "--ready-file",
                 w.path("sink.ready")], "sink")
        w.wait_file(sink, "sink", w.path("sink.ready"))
        # Small chunks: the long jobs below take many transactions.
        e = Engine(w, CARTEIRO, f"[route]\n* = {ADDR}:{PORT}\n"
                   "[queue]\njob_chunk = 100\n").start()

        def campaign(name, n, send_at=None, extra=()):
            path = w.path(f"{name}.csv")
            with open(path, "w", newline="") as f:
                wr = csv.writer(f)
                wr.writerow(["email", "first_name"])
                for i in range(n):
                    wr.writerow([f"{name}{i}@{'abc'[i % 3]}.{name}.test",
                                 "Inês"])
                for a in extra:
                    wr.writerow([a, "X"])
            c = {"name": name, "from": "Loja <l@loja.test>",
                 "subject": "Olá {{first_name}}", "text": "oi",
                 "contacts": path}
            if send_at:
                c["send_at"] = send_at
            with open(w.path(f"{name}.json"), "w") as f:
                json.dump(c, f)
            r = e.cli("submit", w.path(f"{name}.json"))
            return int(r.stdout.split()[0])

        def status(cid):
            return e.req({"op": "status", "id": cid})["campaigns"][0]

        # send_at in the future: rendered and queued, not sent.
        a = campaign("a", 60, "2099-01-01T00:00:00-03:00")
        wait_until("rendered", lambda: status(a)["rendered"] == 60, 60)
        r = e.cli("queue", "list", "--campaign", str(a), "--state", "queued")
        check("queue list shows the 60 waiting messages",
              b"60 matched" in r.stdout, r.stdout.decode()[-300:])
        r = e.cli("queue", "list", "--domain", "b.a.test")
        check("queue list --domain filters", b"20 matched" in r.stdout,
              r.stdout.decode()[-200:])
        lst = e.req({"op": "queue", "action": "list", "campaign": a,
                     "limit": 1})
        mid = lst["messages"][0]["msg"]
        r = e.cli("queue", "show", mid)
        check("queue show prints state and headers",
              b"state:    queued" in r.stdout and b"Subject:" in r.stdout and
              b"From: Loja <l@loja.test>" in r.stdout,
              r.stdout.decode()[:500])
        r = e.cli("queue", "delete", "--campaign", str(a), "--domain",
                  "c.a.test")
        deleted = json.loads(r.stdout)["messages"]
        check("queue delete by domain", deleted == 20, r.stdout.decode())
        r = e.cli("queue", "retry", "--campaign", str(a))
        check("queue retry makes the rest due now",
              json.loads(r.stdout)["messages"] == 40, r.stdout.decode())
        c = e.wait_done(a, 60)
        check("retried messages delivered, deleted ones cancelled",
              c["delivered"] == 40 and c["cancelled"] == 20 and
              c["state"] == "done", json.dumps(c))
        ev = e.events_list()
        check("deletions are in the event log",
              sum(1 for x in ev if x.get("event") == "deleted") == 20)

        # pause survives a restart; resume delivers.
        b = campaign("b", 30, "2099-01-01T00:00:00Z")
        wait_until("rendered", lambda: status(b)["rendered"] == 30, 60)
        r = e.cli("pause", str(b))
        check("pause", b"paused" in r.stdout, r.stdout.decode())
        e.stop()
        e.start()
        check("paused after a restart", status(b)["state"] == "paused")
        e.cli("queue", "retry", "--campaign", str(b))
        # The scheduler looks at due messages at least every second; give
        # it three chances: a paused campaign must still send nothing.
        time.sleep(3)
        check("a paused campaign sends nothing", status(b)["delivered"] == 0)
        e.cli("resume", str(b))
        c = e.wait_done(b, 60)
        check("resume delivers everything", c["delivered"] == 30,
              json.dumps(c))

        # cancel: everything waiting becomes cancelled, also after restart.
        cc = campaign("c", 25, "2099-01-01T00:00:00Z")
        wait_until("rendered", lambda: status(cc)["rendered"] == 25, 60)
        r = e.cli("cancel", str(cc))
        check("cancel", b"cancelled (25 messages)" in r.stdout,
              r.stdout.decode())
        e.stop()
        e.start()
        s = status(cc)
        check("cancelled after a restart", s["state"] == "cancelled" and
              s["cancelled"] == 25 and s["delivered"] == 0, json.dumps(s))
        r = e.cli("queue", "list", "--campaign", str(cc), "--state",
                  "queued")
        check("no message of a cancelled campaign waits",
              b"0 matched" in r.stdout)

        # Jobs over more messages than one transaction takes (10,000):
        # done in chunks, with the same results as one transaction.
        big = 25000
        g = campaign("g", big, "2099-01-01T00:00:00Z")
        wait_until("rendered", lambda: status(g)["rendered"] == big, 300, 0.2)
        r = e.cli("queue", "retry", "--campaign", str(g), "--domain",
                  "b.g.test")
        check("queue retry over 25,000 messages, in chunks",
              json.loads(r.stdout)["messages"] == big // 3, r.stdout.decode())
        wait_until("retried delivered",
                   lambda: status(g)["delivered"] == big // 3, 300, 0.2)
        r = e.cli("queue", "list", "--campaign", str(g), "--state", "queued")
        check("the others still wait", f"{big - big // 3} matched".encode()
              in r.stdout, r.stdout.decode()[-200:])
        r = e.cli("queue", "retry", "--campaign", str(g))
        check("queue retry of the rest", json.loads(r.stdout)["messages"] ==
              big - big // 3, r.stdout.decode())
        s = e.wait_done(g, 300)
        check("all delivered", s["delivered"] == big and s["state"] == "done",
              json.dumps(s))
        wait_until("delivered records forgotten", lambda: e.req(
            {"op": "queue", "action": "list", "campaign": g})["matched"] == 0,
            60, 0.2)

        h = campaign("h", big, "2099-01-01T00:00:00Z")
        wait_until("rendered", lambda: status(h)["rendered"] == big, 300, 0.2)
        r = e.cli("queue", "delete", "--campaign", str(h), "--domain",
                  "a.h.test")
        deleted = json.loads(r.stdout)["messages"]
        check("queue delete over 25,000 messages, in chunks",
              deleted == (big + 2) // 3, r.stdout.decode())
        one = e.req({"op": "queue", "action": "list", "campaign": h,
                     "state": "queued", "limit": 1})["messages"][0]["msg"]
        r = e.cli("queue", "delete", "--msg", one)
        r2 = e.cli("queue", "delete", "--msg", one)
        check("queue delete --msg: that message, once",
              json.loads(r.stdout)["messages"] == 1 and
              json.loads(r2.stdout)["messages"] == 0 and
              e.req({"op": "queue", "action": "show", "msg": one})[
                  "state"] == "cancelled", r.stdout.decode())
        deleted += 1
        check("each deletion in the event log", sum(
            1 for x in e.events_list() if x.get("event") == "deleted" and
            x.get("campaign") == h) == deleted)
        # Cancel, and kill the engine once the first chunks are committed
        # (queue list reads what is committed), most likely before the
        # last. After a restart the campaign ends cancelled with every
        # message counted once (the engine finishes the job; an operator
        # who got no answer may cancel again).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as so:
            so.connect(e.socket)
            so.sendall(json.dumps({"op": "cancel", "id": h}).encode() +
                       b"\n")
            wait_until("cancellation started", lambda: e.req(
                {"op": "queue", "action": "list", "campaign": h,
                 "state": "queued", "limit": 0})["matched"] < big - deleted,
                60, 0.001)
            e.kill()
        e.start()
        if status(h)["state"] != "cancelled":
            e.cli("cancel", str(h))
        wait_until("cancellation finished", lambda: e.req(
            {"op": "queue", "action": "list", "campaign": h,
             "state": "queued"})["matched"] == 0, 120, 0.2)
        wait_until("cancelled counted", lambda: status(h)["cancelled"] ==
                   big, 60, 0.2)
        s = status(h)
        check("cancel over 25,000 messages survives a kill in the middle",
              s["state"] == "cancelled" and s["cancelled"] == big and
              s["delivered"] == 0 and s["pending"] == 0, json.dumps(s))

        # suppression list: honoured by later campaigns, no connection.
        e.cli("suppress", "add", "Bloqueado@Exemplo.test")
        r = e.cli("suppress", "list")
        check("suppress list", b"bloqueado@exemplo.test" in r.stdout,
              r.stdout.decode())
        d = campaign("d", 5, None, ["bloqueado@exemplo.test"])
        s = e.wait_done(d, 60)
        check("suppressed address skipped",
              s["suppressed"] == 1 and s["delivered"] == 5, json.dumps(s))
        ev = e.events_list()
        check("suppressed event logged", any(
            x.get("event") == "suppressed" and
            x.get("rcpt") == "bloqueado@exemplo.test" for x in ev))
        e.cli("suppress", "remove", "Bloqueado@exemplo.test")
        r = e.cli("suppress", "list")
        check("suppress remove", b"loqueado" not in r.stdout)
        e.stop()
    finally:
        w.close()
    sys.exit(finish())


main()
