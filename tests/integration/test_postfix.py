#!/usr/bin/python3
"""carteiro delivering to a real Postfix (its own instance on loopback,
delivering into a maildir): opportunistic STARTTLS is used, every message
arrives exactly once with its personalised content, and Postfix's own log
shows the TLS session.

usage: test_postfix.py CARTEIRO POSTFIX_PEER GEN_CERTS
"""
import csv
import email
import email.policy
import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World  # noqa: E402

CARTEIRO, PEER, GEN_CERTS = map(os.path.abspath, sys.argv[1:4])
ADDR, PORT = "127.10.7.1", 2529
N = 20


def main():
    w = World("postfix")
    os.chmod(w.dir, 0o755)     # Postfix runs its daemons as user postfix
    pdir = w.path("postfix")
    os.mkdir(pdir)
    started = False
    try:
        certs = w.path("certs")
        subprocess.run(["sh", GEN_CERTS, certs, "mx.test.example"],
                       check=True, capture_output=True)
        subprocess.run([PEER, "start", pdir, ADDR, str(PORT), "may",
                        os.path.join(certs, "server.crt"),
                        os.path.join(certs, "server.key")], check=True)
        started = True
        e = Engine(w, CARTEIRO, f"[route]\nexample.com = {ADDR}:{PORT}\n"
                   "[smtp]\ntls = opportunistic\n").start()
        with open(w.path("c.csv"), "w", newline="", encoding="utf-8") as f:
            wr = csv.writer(f)
            wr.writerow(["email", "first_name"])
            for i in range(N):
                wr.writerow([f"cliente{i}@example.com", f"Conceição {i}"])
        with open(w.path("c.json"), "w", encoding="utf-8") as f:
            json.dump({"name": "postfix", "from": "Loja <l@loja.test>",
                       "subject": "Olá {{first_name}}",
                       "text": "Oi {{first_name}}, tudo bem?\n.\nfim\n",
                       "contacts": "c.csv"}, f, ensure_ascii=False)
        r = e.cli("submit", "--wait", "--quiet", w.path("c.json"))
        cid = int(r.stdout.split()[0])
        st = e.req({"op": "status", "id": cid})["campaigns"][0]
        check("all delivered to Postfix", st["delivered"] == N,
              json.dumps(st))
        ev = [x for x in e.events_list() if x.get("event") == "delivered"]
        check("delivered over TLS", len(ev) == N and all(
            x.get("tls", "").startswith("TLS") for x in ev),
            json.dumps(ev[:1]))
        e.stop()
        files = glob.glob(os.path.join(pdir, "mail", "inbox", "new", "*"))
        subjects = set()
        bodies_ok = True
        for p in files:
            with open(p, "rb") as f:
                m = email.message_from_bytes(f.read(),
                                             policy=email.policy.default)
            subjects.add(str(m["subject"]))
            body = m.get_body(("plain",)).get_content()
            # the dot-stuffed line arrives unstuffed
            if "tudo bem?\n.\nfim" not in body.replace("\r\n", "\n"):
                bodies_ok = False
        check("Postfix stored one message per contact",
              len(files) == N and subjects == {f"Olá Conceição {i}"
                                               for i in range(N)},
              f"{len(files)} files")
        check("bodies arrive intact (dot transparency)", bodies_ok)
        with open(os.path.join(pdir, "maillog"), errors="replace") as f:
            log = f.read()
        check("Postfix logged the TLS sessions", "TLS connection established"
              in log, log[-500:])
    finally:
        if started:
            subprocess.run([PEER, "stop", pdir])
        w.close()
    sys.exit(finish())


main()
