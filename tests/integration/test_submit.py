#!/usr/bin/python3
"""Submission over the control socket: what is accepted is committed, and
every kind of bad input gets an error that says what and where, with
nothing half-accepted left in the queue.

usage: test_submit.py CARTEIRO_BINARY
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World  # noqa: E402

BIN = os.path.abspath(sys.argv[1])


def main():
    w = World("submit")
    try:
        # No route and no resolver: nothing is delivered while we look.
        e = Engine(w, BIN, "[route]\n* = 127.10.9.9:9\n").start()
        e.req({"op": "pause", "id": 999})  # harmless: not found

        def write(name, text):
            with open(w.path(name), "w", encoding="utf-8") as f:
                f.write(text)
            return w.path(name)

        write("ok.csv", "email,first_name,city\n"
              "joao@exemplo.test,João,São Paulo\n"
              "conceicao@exemplo.test,Conceição,Belém\n")
        base = {"name": "t", "from": "Loja <loja@loja.test>",
                "subject": "Olá {{first_name}}", "text": "Oi {{first_name}}",
                "contacts": "ok.csv"}

        def submit(camp, base_dir=w.dir):
            return e.req({"op": "submit", "campaign": camp,
                          "base_dir": base_dir})

        # Pause the queue's effect: cancel right after, we only test intake.
        r = submit(base)
        check("valid campaign accepted", r.get("ok") and r["contacts"] == 2,
              json.dumps(r))
        good_id = r.get("id")

        cases = [
            ("missing contacts file", dict(base, contacts="nope.csv"),
             "contacts", "nope.csv"),
            ("malformed CSV row names its line",
             dict(base, contacts=write("bad1.csv",
                  "email,first_name\na@b.test,x\nc@d.test,\"unterminated\n")),
             "contacts", "bad1.csv:3"),
            ("short CSV row names its line",
             dict(base, contacts=write("bad2.csv",
                  "email,first_name,city\na@b.test,x,y\nc@d.test,z\n")),
             "contacts", "bad2.csv:3"),
            ("invalid address names line and field",
             dict(base, contacts=write("bad3.csv",
                  "email,first_name\na@b.test,x\nnot-an-address,y\n")),
             "invalid_contact", "bad3.csv:3: field email"),
            ("header injection in address refused",
             dict(base, contacts=write("bad4.ndjson",
                  '{"email":"a@b.test\\r\\nBcc: x@y.test"}\n')),
             "invalid_contact", "bad4.ndjson:1"),
            ("template syntax error names template:line:column",
             dict(base, text="Oi\n{{#cart}}x"), "template", "text"),
            ("unknown field refused", dict(base, subjetc="x"),
             "invalid_campaign", "subjetc"),
            ("bad from refused", dict(base, **{"from": "nobody"}),
             "invalid_campaign", "from"),
            ("bad send_at refused", dict(base, send_at="amanhã"),
             "invalid_campaign", "send_at"),
            ("WhatsApp without a configured channel refused",
             dict(base, whatsapp={"template": "t", "mode": "both"}),
             "invalid_campaign", "whatsapp"),
        ]
        for name, camp, code, where in cases:
            r = submit(camp)
            err = r.get("error", {})
            check(name, not r.get("ok") and err.get("code") == code and
                  where in (err.get("where", "") + " " + err.get("message",
                                                                 "")),
                  json.dumps(r, ensure_ascii=False))
        r = e.req({"op": "submit"})
        check("request without campaign", not r["ok"] and
              r["error"]["code"] == "bad_request")
        r = e.req({"nop": 1})
        check("request without op", not r["ok"])

        # The template error message points inside the template.
        r = submit(dict(base, text="Oi\n{{#cart}}x"))
        check("template error has line:column",
              "text:2:" in r["error"]["message"], r["error"]["message"])

        # on_invalid = skip keeps the good contacts and lists the others.
        r = submit(dict(base, on_invalid="skip", contacts="bad3.csv"))
        check("on_invalid=skip accepts the rest",
              r.get("ok") and r["contacts"] == 1 and r["skipped"] == 1 and
              "bad3.csv:3" in r["warnings"][0]["where"], json.dumps(r))
        skip_id = r.get("id")

        # Nothing half-accepted: only the two accepted campaigns exist,
        # also after a restart.
        st = e.req({"op": "status"})
        ids = sorted(c["id"] for c in st["campaigns"])
        check("only accepted campaigns exist", ids == sorted([good_id,
                                                              skip_id]),
              str(ids))
        e.stop()
        e.start()
        st = e.req({"op": "status"})
        ids = sorted(c["id"] for c in st["campaigns"])
        check("still only those after restart",
              ids == sorted([good_id, skip_id]), str(ids))
        c = [c for c in st["campaigns"] if c["id"] == good_id][0]
        check("counts survive restart", c["total"] == 2, json.dumps(c))

        # CLI: submit prints the id; errors go to stderr with where.
        cf = write("camp.json", json.dumps(dict(base, contacts="bad2.csv")))
        r = e.cli("submit", cf, check=False)
        check("cli submit error names file:line",
              r.returncode != 0 and b"bad2.csv:3" in r.stderr,
              r.stderr.decode())
        cf = write("camp2.json", json.dumps(base))
        r = e.cli("submit", cf)
        check("cli submit prints the id",
              r.stdout.decode().strip().isdigit(), r.stdout.decode())
        r = e.cli("cancel", r.stdout.decode().strip())
        check("cancel", b"cancelled" in r.stdout, r.stdout.decode())
        e.stop()

        # Configuration errors stop start-up with FILE:LINE.
        bad = write("bad.conf", "[smtp]\ntls = sometimes\n")
        r = subprocess.run([BIN, "config", "check", "-c", bad],
                           capture_output=True)
        check("config check names FILE:LINE",
              r.returncode != 0 and f"{bad}:2: [smtp] tls".encode() in
              r.stderr, r.stderr.decode())
        bad2 = write("bad2.conf", "[smtpp]\nx = 1\n")
        r = subprocess.run([BIN, "serve", "-c", bad2], capture_output=True,
                           timeout=30)
        check("serve refuses an unknown section with FILE:LINE",
              r.returncode != 0 and f"{bad2}:1: unknown section".encode()
              in r.stderr, r.stderr.decode())
        r = subprocess.run([BIN, "config", "show"], capture_output=True)
        check("config show prints the embedded defaults",
              r.returncode == 0 and b"[queue]" in r.stdout and
              b"sync = group" in r.stdout, r.stdout.decode()[:200])
    finally:
        w.close()
    sys.exit(finish())


main()
