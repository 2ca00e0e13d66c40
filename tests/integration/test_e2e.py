#!/usr/bin/python3
"""The whole pipeline with real peers, on loopback only.

dnsmasq serves MX records for 24 test domains spread over two loopback
addresses where the bench sink listens on port 25 (one process, two
listeners, saving every message); plus a null-MX domain and a domain that
does not exist. carteiro renders a 1,000-contact campaign with accented
Brazilian names, resolves MX with c-ares against that dnsmasq and delivers
by SMTP. Then:
  - every contact received exactly one message, with its own content;
  - Python's email package reads every message as valid MIME
    (multipart/alternative, both parts) with the decoded subject, the
    display name and the body personalised for that contact;
  - the null-MX and NXDOMAIN contacts bounced at once (no connection);
  - the event log has one line per outcome, `carteiro status` the counts;
  - domains with the same MX hosts were rolled up into one site.

usage: test_e2e.py CARTEIRO SINK
"""
import csv
import email
import email.policy
import glob
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World, port_open, wait_until  # noqa: E402

CARTEIRO, SINK = map(os.path.abspath, sys.argv[1:3])
MX1, MX2, DNS = "127.10.1.1", "127.10.1.2", "127.10.1.53"
MX3, MX4 = "127.10.1.3", "127.10.1.4"     # defer-once and bounce sinks
MX5, DEAD = "127.10.1.5", "127.10.1.9"     # always 451; nobody listens
DNS_PORT = 5353
N = 1000

FIRST = ["João", "Conceição", "Maria", "José", "Antônio", "Luíza", "Gonçalo",
         "Inês", "Ângela", "Júlia", "Sebastião", "Lúcia", "Cecília", "Mônica"]
LAST = ["Silva", "Gonçalves", "Araújo", "Conceição", "Magalhães", "Brandão",
        "Falcão", "Simões", "Guimarães", "Assunção"]
CITY = ["São Paulo", "Belém", "Florianópolis", "Maceió", "Goiânia",
        "Ribeirão Preto", "Niterói"]



def _try(f):
    try:
        return f()
    except (OSError, ValueError):
        return False


def dnsmasq(w, domains):
    conf = w.path("dnsmasq.conf")
    with open(conf, "w") as f:
        f.write("host-record=mx1.e2e.test,%s\n" % MX1)
        f.write("host-record=mx2.e2e.test,%s\n" % MX2)
        for i, d in enumerate(domains):
            if i % 3 == 0:     # mx1 only
                f.write(f"mx-host={d},mx1.e2e.test,10\n")
            elif i % 3 == 1:   # mx2 only
                f.write(f"mx-host={d},mx2.e2e.test,10\n")
            else:              # both, mx1 preferred
                f.write(f"mx-host={d},mx1.e2e.test,10\n")
                f.write(f"mx-host={d},mx2.e2e.test,20\n")
        f.write("host-record=mx3.e2e.test,%s\n" % MX3)
        f.write("host-record=mx4.e2e.test,%s\n" % MX4)
        f.write("mx-host=adiado.e2e.test,mx3.e2e.test,10\n")
        f.write("host-record=mx5.e2e.test,%s\n" % MX5)
        f.write("mx-host=expira.e2e.test,mx5.e2e.test,10\n")
        # The preferred MX refuses connections: fail over to the next.
        f.write("host-record=mxdead.e2e.test,%s\n" % DEAD)
        f.write("mx-host=failover.e2e.test,mxdead.e2e.test,10\n")
        f.write("mx-host=failover.e2e.test,mx2.e2e.test,20\n")
        # IPv6: an MX host with only an AAAA record.
        f.write("host-record=mx6.e2e.test,::1\n")
        f.write("mx-host=v6.e2e.test,mx6.e2e.test,10\n")
        # A zone whose server does not answer: SERVFAIL / timeout.
        f.write("server=/semdns.test/127.10.1.254\n")
        f.write("mx-host=recusa.e2e.test,mx4.e2e.test,10\n")
        # No MX at all: the domain's own address (implicit MX).
        f.write("host-record=semmx.e2e.test,%s\n" % MX1)
        # RFC 7505 null MX: preference 0, root target.
        f.write("dns-rr=nullmx.e2e.test,15,000000\n")
        f.write("local=/e2e.test/\n")
    p = w.start(["dnsmasq", "--keep-in-foreground", "--no-resolv",
                 "--no-hosts", "--bind-interfaces",
                 f"--listen-address={DNS}", f"--port={DNS_PORT}",
                 f"--conf-file={conf}", "--user=root",
                 f"--pid-file={w.path('dnsmasq.pid')}"], "dnsmasq")

    def answers():
        r = subprocess.run(["/usr/bin/python3", "-c", f"""
import socket,struct
q=struct.pack('>HHHHHH',7,0x100,1,0,0,0)+b'\\x03d00\\x03e2e\\x04test\\x00'+struct.pack('>HH',15,1)
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.3)
s.sendto(q,('{DNS}',{DNS_PORT}));d=s.recv(512)
print(struct.unpack('>HHHHHH',d[:12])[3])"""], capture_output=True,
                           text=True)
        return r.returncode == 0 and r.stdout.strip() not in ("", "0")
    wait_until("dnsmasq", lambda: p.poll() is None and answers(), 20)
    return p


def main():
    w = World("e2e")
    try:
        domains = [f"d{i:02d}.e2e.test" for i in range(24)]
        dnsmasq(w, domains)
        save = w.path("saved")
        os.mkdir(save)
        sink = w.start([SINK, "-l", f"{MX1}:25", "-l", f"{MX2}:25",
                 "-l", f"{MX3}:25,defer=100", "-l", f"{MX4}:25,bounce=100",
                 "-l", f"{MX5}:25,fail=rcpt:451", "-l", "[::1]:25",
                 "--ready-file",
                 w.path("sink.ready"), "--save", save, "--stats",
                 w.path("sink-stats.json")], "sink")
        w.wait_file(sink, "sink", w.path("sink.ready"))

        rnd = random.Random(7)
        contacts = []
        for i in range(N):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            contacts.append({
                "email": f"cliente.{i}@{domains[i % len(domains)]}",
                "first_name": first, "last_name": last,
                "city": rnd.choice(CITY), "order": f"P{100000 + i}"})
        bad = [{"email": "ana@nullmx.e2e.test", "first_name": "Ana",
                "last_name": "Nula", "city": "Recife", "order": "P1"},
               {"email": "bia@nullmx.e2e.test", "first_name": "Bia",
                "last_name": "Nula", "city": "Recife", "order": "P2"},
               {"email": "caio@naoexiste.e2e.test", "first_name": "Caio",
                "last_name": "Sem", "city": "Natal", "order": "P3"}]
        # Deferred once then accepted; refused (550 5.1.1); no MX record.
        extra = [{"email": f"adiado{i}@adiado.e2e.test", "first_name": "Íris",
                  "last_name": "Adiada", "city": "Olinda",
                  "order": f"A{i}"} for i in range(5)]
        extra += [{"email": f"recusa{i}@recusa.e2e.test",
                   "first_name": "Ênio", "last_name": "Recusado",
                   "city": "Olinda", "order": f"R{i}"} for i in range(5)]
        extra += [{"email": "semmx@semmx.e2e.test", "first_name": "Olga",
                   "last_name": "Implícita", "city": "Olinda",
                   "order": "I1"}]
        extra += [{"email": f"failover{i}@failover.e2e.test",
                   "first_name": "Úrsula", "last_name": "Reserva",
                   "city": "Olinda", "order": f"F{i}"} for i in range(3)]
        extra += [{"email": "seis@v6.e2e.test", "first_name": "Sílvio",
                   "last_name": "Seis", "city": "Olinda", "order": "V6"}]
        expiring = [{"email": f"expira{i}@expira.e2e.test",
                     "first_name": "Élio", "last_name": "Prazo",
                     "city": "Olinda", "order": f"E{i}"} for i in range(2)]
        expiring += [{"email": "x@semdns.test", "first_name": "Dinis",
                      "last_name": "Falha", "city": "Olinda",
                      "order": "D1"}]
        with open(w.path("contacts.csv"), "w", newline="",
                  encoding="utf-8") as f:
            wr = csv.DictWriter(f, ["email", "first_name", "last_name",
                                    "city", "order"])
            wr.writeheader()
            for c in contacts + bad + extra + expiring:
                wr.writerow(c)
        camp = {
            "name": "e2e — pedidos",
            "from": "Loja São João <pedidos@loja.e2e.test>",
            "subject": "{{first_name}}, seu pedido {{order}} saiu para "
                       "entrega em {{city}}",
            "html": "<p>Olá, <b>{{first_name}} {{last_name}}</b>!</p>"
                    "<p>Pedido {{order}} — {{city}}</p>",
            "text": "Olá, {{first_name}} {{last_name}}!\n"
                    "Pedido {{order}} — {{city}}\n",
            "contacts": "contacts.csv",
            "unsubscribe_url": "https://loja.e2e.test/sair",
        }
        with open(w.path("campaign.json"), "w", encoding="utf-8") as f:
            json.dump(camp, f, ensure_ascii=False)

        e = Engine(w, CARTEIRO, f"""[dns]
servers = {DNS}:{DNS_PORT}
timeout = 1s
tries = 1

[retry]
schedule = 1s
jitter = 0%
max_age = 3s
""").start()
        r = e.cli("submit", "--wait", "--quiet", w.path("campaign.json"),
                  timeout=600)
        cid = int(r.stdout.decode().split()[0])
        st = e.req({"op": "status", "id": cid, "sites": True})
        c = st["campaigns"][0]
        check("campaign done", c["state"] == "done", json.dumps(c))
        check(f"{N} + 10 delivered", c["delivered"] == N + 10, json.dumps(c))
        check("3 expired after max_age (always 451; DNS failing)",
              c["expired"] == 3, json.dumps(c))
        check("8 bounced (null MX, NXDOMAIN, 550)", c["bounced"] == 8,
              json.dumps(c))
        check("deferrals counted (5 once, 2 until expiry)",
              c["deferrals"] >= 5 + 2 * 2, json.dumps(c))

        # The sink's copies: exactly one per contact.
        got = {}
        for path in glob.glob(os.path.join(save, "*.eml")):
            with open(path, "rb") as f:
                raw = f.read()
            head, _, body = raw.partition(b"\r\nX-Sink-Envelope: listener")
            rcpts = [l.split(b"<", 1)[1].rstrip(b">\r").decode()
                     for l in raw.split(b"\r\n")
                     if l.startswith(b"X-Sink-Envelope: RCPT TO:")]
            msg_bytes = b"\r\n".join(
                l for l in raw.split(b"\r\n")
                if not l.startswith(b"X-Sink-Envelope:"))
            for rc in rcpts:
                got.setdefault(rc, []).append(msg_bytes)
        want = [x["email"] for x in contacts + extra
                if "recusa" not in x["email"]]
        check("every contact got exactly one message",
              sorted(got) == sorted(want) and
              all(len(v) == 1 for v in got.values()),
              f"{len(got)} recipients")

        bad_mime = []
        for x in contacts:
            if x["email"] not in got:
                continue
            m = email.message_from_bytes(got[x["email"]][0],
                                         policy=email.policy.default)
            subj = (f"{x['first_name']}, seu pedido {x['order']} saiu para "
                    f"entrega em {x['city']}")
            problems = []
            if m.defects:
                problems.append(f"defects {m.defects}")
            if str(m["subject"]) != subj:
                problems.append(f"subject {m['subject']!r}")
            if m.get_content_type() != "multipart/alternative":
                problems.append(m.get_content_type())
            to = m["to"].addresses[0]
            if to.display_name != f"{x['first_name']} {x['last_name']}" or \
                    to.addr_spec != x["email"]:
                problems.append(f"to {m['to']!r}")
            frm = m["from"].addresses[0]
            if frm.display_name != "Loja São João":
                problems.append(f"from {m['from']!r}")
            text = m.get_body(("plain",)).get_content()
            html = m.get_body(("html",)).get_content()
            want = f"Olá, {x['first_name']} {x['last_name']}!"
            if want not in text or f"Pedido {x['order']} — {x['city']}" \
                    not in text:
                problems.append(f"text {text!r}")
            if f"<b>{x['first_name']} {x['last_name']}</b>" not in html:
                problems.append(f"html {html!r}")
            if not m["message-id"] or not m["date"] or \
                    m["mime-version"] != "1.0":
                problems.append("headers")
            if "List-Unsubscribe=One-Click" != str(
                    m["list-unsubscribe-post"]):
                problems.append("list-unsubscribe-post")
            if problems:
                bad_mime.append((x["email"], problems))
        check("Python's email reads every message with its own content",
              not bad_mime, str(bad_mime[:3]))
        mids = set()
        for v in got.values():
            m = email.message_from_bytes(v[0], policy=email.policy.default)
            mids.add(str(m["message-id"]))
        check("Message-IDs are unique", len(mids) == len(got))

        ev = e.events_list()
        delivered = [x for x in ev if x.get("event") == "delivered"]
        bounced = [x for x in ev if x.get("event") == "bounced"]
        check("event log: one delivered line per message",
              len({x["msg"] for x in delivered}) == len(delivered) == N + 10,
              str(len(delivered)))
        expired = [x for x in ev if x.get("event") == "expired"]
        check("event log: expired after max_age",
              len(expired) == 3 and all(x.get("code") == 451
                                        for x in expired
                                        if "expira" in x["rcpt"]),
              json.dumps(expired))
        dnsfail = [x for x in ev if x.get("rcpt") == "x@semdns.test" and
                   x.get("event") == "deferred"]
        check("DNS failure defers (not bounced)",
              dnsfail and all("DNS" in x.get("reply", "") for x in dnsfail),
              json.dumps(dnsfail[:1]))
        v6 = [x for x in delivered if x["rcpt"] == "seis@v6.e2e.test"]
        check("IPv6: delivered to an MX with only an AAAA record",
              len(v6) == 1 and v6[0].get("mx") == "mx6.e2e.test",
              json.dumps(v6))
        fo = [x for x in delivered if "failover" in x["rcpt"]]
        check("MX fail-over: the refused MX is skipped, the next delivers",
              len(fo) == 3 and all(x.get("mx") == "mx2.e2e.test" for x in fo),
              json.dumps(fo[:1]))
        br = e.req({"op": "status", "id": cid, "bounces": True})
        cats = br["campaigns"][0]["bounce_report"]["categories"]
        check("bounce report by category", cats == {"bad_domain": 3,
                                                    "bad_mailbox": 5},
              json.dumps(br["campaigns"][0]["bounce_report"]))
        dns_b = [x for x in bounced if "e2e.test" in x["rcpt"] and
                 "recusa" not in x["rcpt"]]
        check("event log: bounces at DNS, no connection",
              len(dns_b) == 3 and all(
                  x.get("category") == "bad_domain" and "mx" not in x
                  for x in dns_b), json.dumps(dns_b))
        hard = [x for x in bounced if "recusa" in x["rcpt"]]
        check("event log: 550 5.1.1 is a bad_mailbox bounce",
              len(hard) == 5 and all(
                  x.get("code") == 550 and x.get("enhanced") == "5.1.1" and
                  x.get("category") == "bad_mailbox" for x in hard),
              json.dumps(hard[:1]))
        deferred = [x for x in ev if x.get("event") == "deferred" and
                    "adiado" in x["rcpt"]]
        retried = [x for x in delivered if "adiado" in x["rcpt"]]
        check("event log: 451 deferred, delivered on attempt 2",
              len(deferred) == 5 and all(x.get("code") == 451
                                         for x in deferred) and
              len(retried) == 5 and all(x["attempt"] == 2
                                        for x in retried),
              json.dumps(deferred[:1] + retried[:1]))
        sup = e.req({"op": "suppress", "action": "list"})["suppressed"]
        check("hard bounces are on the suppression list",
              sorted(x["address"] for x in sup) ==
              sorted(f"recusa{i}@recusa.e2e.test" for i in range(5)),
              json.dumps(sup))
        sink.send_signal(10)   # SIGUSR1: the sink writes stats
        stats = {}

        def read_stats():
            with open(w.path("sink-stats.json")) as f:
                stats.update(json.load(f))
            return True
        wait_until("sink stats", lambda: _try(read_stats), 10)
        conns = sum(x.get("connections", {}).get("total", 0)
                    if isinstance(x.get("connections"), dict)
                    else x.get("connections_total", 0)
                    for x in stats.get("listeners", []))
        check("connections are reused for several messages",
              0 < conns < N / 5, f"{conns} connections")
        fields = {"ts", "campaign", "msg", "rcpt", "event", "site", "mx",
                  "code", "reply", "attempt", "ms"}
        check("delivered events carry the documented fields",
              len(delivered) == N + 10 and
              all(fields <= set(x) for x in delivered),
              json.dumps(delivered[0]))
        sites = st["engine"].get("sites", [])
        keys = sorted(s["site"] for s in sites)
        check("MX rollup: three sites for 24 domains (+ 5 others)",
              keys == sorted(
                  ["mx1.e2e.test", "mx1.e2e.test,mx2.e2e.test",
                   "mx2.e2e.test", "mx3.e2e.test", "mx4.e2e.test",
                   "mx5.e2e.test", "mx2.e2e.test,mxdead.e2e.test",
                   "mx6.e2e.test", "semmx.e2e.test"]), str(keys))
        r = e.cli("status", str(cid))
        check("carteiro status shows the campaign",
              b"done" in r.stdout and b"1010" in r.stdout,
              r.stdout.decode())
        e.stop()
    finally:
        w.close()
    sys.exit(finish())


main()
