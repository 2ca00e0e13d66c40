#!/usr/bin/python3
"""WhatsApp as the second channel, through the whole engine, against the
Cloud API double (bench/wa-double) and the bench sink:

  both      every contact gets the e-mail and one WhatsApp template message
            with its own rendered parameters;
  fallback  WhatsApp only for contacts e-mail cannot reach: no address,
            suppressed, hard bounce (550 5.1.1); never for delivered ones;
            an undeliverable number (131026) fails with the code in the
            event log and is not retried; no usable phone: a clear event;
  only      WhatsApp and no e-mail;
  token     a refused token (190) pauses the channel (status says so)
            without failing the messages; a new token + config reload
            resumes and sends them.
No contact ever gets a campaign's WhatsApp twice.

usage: test_whatsapp_e2e.py CARTEIRO SINK WA_DOUBLE
"""
import csv
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World, wait_until  # noqa: E402

CARTEIRO, SINK, DOUBLE = map(os.path.abspath, sys.argv[1:4])
WA_ADDR, WA_PORT = "127.10.9.1", 8099
OK_ADDR, BOUNCE_ADDR, PORT = "127.10.9.2", "127.10.9.3", 2532
TOKEN = "EAAtest-token-0123456789"


def main():
    w = World("wa")
    try:
        sink = w.start([SINK, "-l", f"{OK_ADDR}:{PORT}",
                        "-l", f"{BOUNCE_ADDR}:{PORT},bounce=100",
                        "--ready-file", w.path("sink.ready")], "sink")
        w.wait_file(sink, "sink", w.path("sink.ready"))
        rec = w.path("wa.jsonl")

        def start_double(name, *extra):
            d = w.start(["/usr/bin/python3", DOUBLE, "--listen",
                         f"{WA_ADDR}:{WA_PORT}", "--token", TOKEN,
                         "--phone-number-id", "5511000", "--record", rec,
                         "--fail", "5511900000013=131026", "--ready-file",
                         w.path(f"{name}.ready"), *extra], name)
            w.wait_file(d, name, w.path(f"{name}.ready"))
            return d
        double = start_double("double")
        with open(w.path("token"), "w") as f:
            f.write(TOKEN + "\n")
        conf = f"""[route]
ok.wa.test = {OK_ADDR}:{PORT}
recusa.wa.test = {BOUNCE_ADDR}:{PORT}
[whatsapp]
api_url = http://{WA_ADDR}:{WA_PORT}/v21.0
phone_number_id = 5511000
token_file = {w.path('token')}
rate = 0
"""
        e = Engine(w, CARTEIRO, conf).start()
        e.cli("suppress", "add", "bloqueado@ok.wa.test")

        def campaign(name, mode, rows):
            with open(w.path(f"{name}.csv"), "w", newline="",
                      encoding="utf-8") as f:
                wr = csv.writer(f)
                wr.writerow(["email", "phone", "first_name"])
                for r in rows:
                    wr.writerow(r)
            with open(w.path(f"{name}.json"), "w", encoding="utf-8") as f:
                json.dump({"name": name, "from": "Loja <l@loja.test>",
                           "subject": "Olá {{first_name}}", "text": "Oi",
                           "contacts": f"{name}.csv",
                           "whatsapp": {"template": "carrinho_abandonado",
                                        "language": "pt_BR", "mode": mode,
                                        "params": ["{{first_name}}",
                                                   "{{ first_name | upper }}"]}},
                          f, ensure_ascii=False)
            r = e.cli("submit", "--wait", "--quiet", w.path(f"{name}.json"),
                      check=False, timeout=120)
            return int(r.stdout.split()[0]), r.returncode

        def sent_to():
            out = {}
            try:
                with open(rec, encoding="utf-8") as f:
                    for line in f:
                        x = json.loads(line)
                        if x.get("status") == 200:
                            out.setdefault(x["to"], []).append(x)
            except FileNotFoundError:
                pass
            return out

        # both
        both = [(f"b{i}@ok.wa.test", f"+55 11 90000-00{i:02d}", f"Ana {i}")
                for i in range(5)]
        cid, rc = campaign("both", "both", both)
        st = e.req({"op": "status", "id": cid})["campaigns"][0]
        s = sent_to()
        check("both: every contact gets e-mail and WhatsApp",
              rc == 0 and st["delivered"] == 5 and
              st["whatsapp"]["sent"] == 5 and
              all(len(s.get(f"55119000000{i:02d}", [])) == 1
                  for i in range(5)), json.dumps(st))
        x = s.get("5511900000000", [{}])[0]
        check("both: template, language and rendered parameters",
              x.get("template") == "carrinho_abandonado" and
              x.get("language") == "pt_BR" and
              x.get("params") == ["Ana 0", "ANA 0"], json.dumps(x))

        # fallback
        fb = [("ok1@ok.wa.test", "+5511900000010", "Bia"),      # e-mail ok
              ("", "+5511900000011", "Caio"),                    # no e-mail
              ("bloqueado@ok.wa.test", "+5511900000012", "Davi"),  # suppressed
              ("", "+5511900000013", "Eva"),        # WhatsApp fails (131026)
              ("hard@recusa.wa.test", "+5511900000014", "Fábio"),  # 550 5.1.1
              ("", "", "Gil")]                      # no e-mail, no phone
        cid2, rc = campaign("fb", "fallback", fb)
        st = e.req({"op": "status", "id": cid2})["campaigns"][0]
        s = sent_to()
        check("fallback: campaign finishes",
              rc == 0 and st["state"] == "done", json.dumps(st))
        check("fallback: WhatsApp for no e-mail, suppressed and hard bounce",
              all(len(s.get(n, [])) == 1 for n in
                  ("5511900000011", "5511900000012", "5511900000014")),
              str(sorted(s)))
        check("fallback: nothing on WhatsApp when the e-mail was delivered",
              "5511900000010" not in s)
        ev = e.events_list()
        f13 = [x for x in ev if x.get("rcpt") == "5511900000013"]
        check("fallback: 131026 fails with its code, not retried",
              len(f13) == 1 and f13[0]["event"] == "whatsapp_failed" and
              f13[0].get("error_code") == 131026, json.dumps(f13))
        nophone = [x for x in ev if x.get("event") == "whatsapp_failed" and
                   "no usable phone" in x.get("reply", "")]
        check("fallback: no usable phone gets a clear event",
              len(nophone) == 1, json.dumps(nophone))
        check("fallback: counts", st["whatsapp"]["sent"] == 3 and
              st["whatsapp"]["failed"] == 2, json.dumps(st))
        # The delivered contact's WhatsApp message waited on standby; the
        # finished campaign forgets it and frees its body.
        def standby():
            return e.req({"op": "queue", "action": "list", "campaign": cid2,
                          "state": "standby"})["matched"]
        try:
            wait_until("standby forgotten", lambda: standby() == 0, 30, 0.05)
        except TimeoutError:
            pass
        check("fallback: no WhatsApp left on standby once the campaign is "
              "done", standby() == 0)

        # only
        only = [(f"o{i}@ok.wa.test", f"+55119000001{i:02d}", f"Hugo {i}")
                for i in range(3)]
        cid3, rc = campaign("only", "only", only)
        st = e.req({"op": "status", "id": cid3})["campaigns"][0]
        s = sent_to()
        check("only: WhatsApp and no e-mail",
              rc == 0 and st["delivered"] == 0 and st["skipped"] == 3 and
              all(len(s.get(f"55119000001{i:02d}", [])) == 1
                  for i in range(3)), json.dumps(st))

        # token refused: pause, then resume after a new token + reload
        w.stop(double)
        double = start_double("double2", "--token-expired")
        tk = [(f"t{i}@nowhere.invalid", f"+55119000002{i:02d}", "Ivo")
              for i in range(2)]
        with open(w.path("tk.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["email", "phone", "first_name"])
            for r in tk:
                wr.writerow(r)
        with open(w.path("tk.json"), "w") as f:
            json.dump({"name": "tk", "from": "Loja <l@loja.test>",
                       "subject": "x", "text": "y", "contacts": "tk.csv",
                       "whatsapp": {"template": "lembrete", "mode": "only"}},
                      f)
        cid4 = int(e.cli("submit", w.path("tk.json")).stdout.split()[0])
        wait_until("channel paused", lambda: "paused" in e.req(
            {"op": "status"})["engine"].get("whatsapp", {}).get("state", ""),
            60, 0.1)
        st = e.req({"op": "status", "id": cid4})["campaigns"][0]
        check("token refused: channel paused, messages not failed",
              st["whatsapp"]["failed"] == 0 and st["state"] == "ready",
              json.dumps(st))
        r = e.cli("status")
        check("carteiro status says the channel is paused",
              b"whatsapp: paused" in r.stdout, r.stdout.decode()[:300])
        w.stop(double)
        double = start_double("double3")
        e.cli("config", "reload")
        st = e.wait_done(cid4, 120)
        check("new token + reload: the paused messages are sent",
              st["whatsapp"]["sent"] == 2, json.dumps(st))

        # SIGKILL while WhatsApp requests are in flight (slow API): after
        # the restart nothing is sent twice; what was in flight is failed.
        w.stop(double)
        double = start_double("double4", "--delay", "300")
        ck = [(f"k{i}@nowhere.invalid", f"+55119000003{i:02d}", "Zeca")
              for i in range(40)]
        with open(w.path("ck.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["email", "phone", "first_name"])
            for r in ck:
                wr.writerow(r)
        with open(w.path("ck.json"), "w") as f:
            json.dump({"name": "ck", "from": "Loja <l@loja.test>",
                       "subject": "x", "text": "y", "contacts": "ck.csv",
                       "whatsapp": {"template": "crash", "mode": "only"}}, f)
        cid5 = int(e.cli("submit", w.path("ck.json")).stdout.split()[0])

        def some_sent():
            return sum(1 for v in sent_to().values()
                       for x in v if x.get("template") == "crash") >= 3
        wait_until("some crash messages sent", some_sent, 60, 0.05)
        e.kill()
        e.start()
        st = e.wait_done(cid5, 120)
        s = sent_to()
        crash = {k: v for k, v in s.items() if v[0].get("template") ==
                 "crash"}
        print(f"# crash: {st['whatsapp']} ({len(crash)} numbers reached)")
        check("after a crash: every message has an outcome",
              st["whatsapp"]["sent"] + st["whatsapp"]["failed"] == 40,
              json.dumps(st))
        check("after a crash: interrupted ones are failed, not resent",
              st["whatsapp"]["failed"] <= 16 and all(
                  len(v) == 1 for v in crash.values()), json.dumps(st))

        s = sent_to()
        check("no contact got a campaign's WhatsApp twice",
              all(len(v) == 1 for v in s.values()),
              str({k: len(v) for k, v in s.items() if len(v) > 1}))
        e.stop()
    finally:
        w.close()
    sys.exit(finish())


main()
