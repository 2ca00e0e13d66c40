#!/usr/bin/python3
"""DKIM through the whole engine: carteiro configured with an RSA-2048 and
an Ed25519 key (dual signing) renders a campaign whose contacts carry
accents, long lines, empty values and odd whitespace, delivers it to the
bench sink, and python3-dkim (an independent verifier) must accept both
signatures of every message as received. The signed header list must
cover List-Unsubscribe and List-Unsubscribe-Post (RFC 8058).

usage: test_dkim_e2e.py CARTEIRO SINK
"""
import base64
import csv
import glob
import json
import os
import subprocess
import sys

import dkim

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World, wait_until  # noqa: E402

CARTEIRO, SINK = map(os.path.abspath, sys.argv[1:3])
ADDR, PORT = "127.10.6.1", 2528


def openssl(*args):
    return subprocess.run(["openssl", *args], check=True,
                          capture_output=True).stdout


def main():
    w = World("dkim")
    try:
        dns = {}
        for sel, args in (("rsa", ["-algorithm", "RSA", "-pkeyopt",
                                   "rsa_keygen_bits:2048"]),
                          ("ed", ["-algorithm", "ED25519"])):
            path = w.path(f"{sel}.pem")
            openssl("genpkey", *args, "-out", path)
            der = openssl("pkey", "-in", path, "-pubout", "-outform", "DER")
            p = base64.b64encode(der if sel == "rsa" else der[-32:])
            dns[f"{sel}._domainkey.loja.test.".encode()] = \
                b"v=DKIM1; k=" + (b"rsa" if sel == "rsa" else b"ed25519") + \
                b"; p=" + p
        save = w.path("saved")
        os.mkdir(save)
        sink = w.start([SINK, "-l", f"{ADDR}:{PORT}", "--ready-file",
                 w.path("sink.ready"), "--save", save], "sink")
        w.wait_file(sink, "sink", w.path("sink.ready"))
        e = Engine(w, CARTEIRO, f"""[route]
* = {ADDR}:{PORT}
[dkim]
domain = loja.test
selector = rsa
key = {w.path('rsa.pem')}
selector2 = ed
key2 = {w.path('ed.pem')}
""").start()
        names = ["João", "Conceição", "", "  Ana   Maria  ", "Zé\tdo Caixão",
                 "Ação de Graças 🎉", "x" * 300, "O'Brien \"Jr.\""]
        with open(w.path("c.csv"), "w", newline="", encoding="utf-8") as f:
            wr = csv.writer(f)
            wr.writerow(["email", "first_name", "note"])
            for i in range(40):
                wr.writerow([f"c{i}@d{i % 5}.test", names[i % len(names)],
                             ("linha longa " * (i * 20)) + " \t "])
        camp = {"name": "dkim", "from": "Loja Ação <ofertas@loja.test>",
                "subject": "{{first_name}}  —  ofertas   especiais ",
                "text": "Olá {{first_name}}!\n\n{{note}}\n.\n..\n \n",
                "html": "{{#first_name}}<p>{{first_name}}</p>{{/first_name}}"
                        "{{note}}",
                "contacts": "c.csv",
                "unsubscribe_url": "https://loja.test/sair"}
        with open(w.path("c.json"), "w", encoding="utf-8") as f:
            json.dump(camp, f, ensure_ascii=False)
        r = e.cli("submit", "--wait", "--quiet", w.path("c.json"))
        cid = int(r.stdout.split()[0])
        st = e.req({"op": "status", "id": cid})["campaigns"][0]
        check("all delivered", st["delivered"] == 40, json.dumps(st))

        def dnsfunc(name, timeout=5):
            return dns.get(name)
        bad, checked, covered = [], 0, True
        for path in glob.glob(os.path.join(save, "*.eml")):
            with open(path, "rb") as f:
                raw = f.read()
            msg = b"\r\n".join(l for l in raw.split(b"\r\n")
                               if not l.startswith(b"X-Sink-Envelope:"))
            d = dkim.DKIM(msg, minkey=1024)
            sigs = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
            if len(sigs) != 2:
                bad.append((path, f"{len(sigs)} signatures"))
                continue
            for i in range(2):
                if not d.verify(idx=i, dnsfunc=dnsfunc):
                    bad.append((path, f"signature {i} fails"))
            for _, v in sigs:
                h = v.replace(b"\r\n", b"").replace(b" ", b"").lower()
                if b"list-unsubscribe:list-unsubscribe-post" not in h and \
                        not (b"list-unsubscribe" in h and
                             b"list-unsubscribe-post" in h):
                    covered = False
            checked += 1
        check("python3-dkim verifies both signatures of every message",
              checked == 40 and not bad, f"{checked} checked, {bad[:3]}")
        check("List-Unsubscribe(-Post) are signed", covered)
        e.stop()
    finally:
        w.close()
    sys.exit(finish())


main()
