#!/usr/bin/python3
"""Traffic shaping, measured at the receiving side (the bench sink) and in
the event log: sites by MX patterns, per-site connection caps, a source
address pool with per-address limits, message and connection rates,
adaptive backoff on a burst of 421 replies (step down, suspend, step back
up; suspended messages are not attempts), warm-up caps that survive a
restart, transactional ahead of bulk inside a site, round-robin between
bulk campaigns, and a live reload.

Nothing here asserts that something is fast: rates are checked as lower
bounds on elapsed time (an engine can be slower than its rate on a busy
machine, never faster), everything else by counts and events.

usage: test_shaping.py CARTEIRO SINK
"""
import csv
import datetime
import json
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import check, finish, Engine, World, start_dnsmasq, wait_until  # noqa

CARTEIRO, SINK = map(os.path.abspath, sys.argv[1:3])
NET = "127.10.11"
DNS, DNS_PORT = f"{NET}.53", 5353
MX = {"google": f"{NET}.1", "yahoo": f"{NET}.3", "uol": f"{NET}.4",
      "rated": f"{NET}.5", "conns": f"{NET}.6", "cap": f"{NET}.7"}
SOURCES = [f"{NET}.101", f"{NET}.102"]


def epoch(ts):
    """Event-log time stamp ("2026-11-23T10:00:00.123Z") to seconds."""
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def main():
    w = World("shaping")
    try:
        # Answers live 1 s: domains are re-resolved while their messages
        # wait in their sites (a counting bug once stranded messages there).
        lines = ["local=/shape.test/", "local-ttl=1"]
        for name, addr in MX.items():
            lines.append(f"host-record=mx1.{name}.shape.test,{addr}")
        # Two domains whose MX hosts match [site google]: one site.
        lines += ["mx-host=gmail.test,mx1.google.shape.test,10",
                  "mx-host=googlemail.test,mx1.google.shape.test,10",
                  "mx-host=yahoo.test,mx1.yahoo.shape.test,10",
                  "mx-host=uol.test,mx1.uol.shape.test,10",
                  "mx-host=rated.test,mx1.rated.shape.test,10",
                  "mx-host=conns.test,mx1.conns.shape.test,10",
                  # Two sites (different MX hosts) on one sink listener:
                  # its peak is their connections together.
                  f"host-record=mx1.capa.shape.test,{MX['cap']}",
                  f"host-record=mx1.capb.shape.test,{MX['cap']}",
                  "mx-host=capa.test,mx1.capa.shape.test,10",
                  "mx-host=capb.test,mx1.capb.shape.test,10"]
        start_dnsmasq(w, DNS, DNS_PORT, lines, "gmail.test")
        stats_path = w.path("sink-stats.json")
        sink = w.start([SINK,
                        "-l", f"{MX['google']}:25,delay=5",
                        "-l", f"{MX['yahoo']}:25,fail=rcpt:421:20",
                        "-l", f"{MX['uol']}:25",
                        "-l", f"{MX['rated']}:25",
                        "-l", f"{MX['conns']}:25",
                        "-l", f"{MX['cap']}:25,delay=20",
                        "--ready-file", w.path("sink.ready"),
                        "--stats", stats_path], "sink")
        w.wait_file(sink, "sink", w.path("sink.ready"))

        conf = f"""source = {", ".join(SOURCES)}
source_max_connections = 2
site_max_connections = 10

[dns]
servers = {DNS}:{DNS_PORT}

[retry]
schedule = 1s

[backoff]
quiet = 1s
cooldown = 1m
postpone_after = 1s
builtin_rules = no
rule = 421 * -> slow 50%, suspend 2s

[site google]
mx = *.google.shape.test
max_connections = 3

[site yahoo]
mx = *.yahoo.shape.test
max_connections = 4

[site uol]
mx = *.uol.shape.test
warmup = 5, 10

[site rated]
mx = *.rated.shape.test
rate = 20/s
rate_burst = 5

[site conns]
mx = *.conns.shape.test
connection_rate = 2/s
max_messages_per_connection = 1
"""
        e = Engine(w, CARTEIRO, conf).start()

        def campaign(name, emails, priority=None):
            path = w.path(f"{name}.csv")
            with open(path, "w", newline="") as f:
                wr = csv.writer(f)
                wr.writerow(["email", "first_name"])
                for a in emails:
                    wr.writerow([a, "Inês"])
            c = {"name": name, "from": "Loja <l@loja.test>",
                 "subject": "Olá {{first_name}}", "text": "oi",
                 "contacts": path}
            if priority:
                c["priority"] = priority
            with open(w.path(f"{name}.json"), "w") as f:
                json.dump(c, f)
            return int(e.cli("submit", w.path(f"{name}.json")).stdout.split()[0])

        def sink_stats():
            before = 0
            try:
                with open(stats_path) as f:
                    before = json.load(f)["seq"]
            except (OSError, ValueError, KeyError):
                pass
            sink.send_signal(signal.SIGUSR1)
            out = {}

            def fresh():
                try:
                    with open(stats_path) as f:
                        s = json.load(f)
                except (OSError, ValueError):
                    return False
                out.update(s)
                return s["seq"] > before
            wait_until("sink stats", fresh, 10)
            return {x["address"].split(":")[0]: x for x in out["listeners"]}

        def sites():
            r = e.cli("status", "--sites", "--json")
            return {s["site"]: s for s in json.loads(r.stdout)["engine"]["sites"]}

        # 1. Connections: 300 messages to two domains of one site capped at
        #    3 connections, over two source addresses of 2 connections each.
        g = campaign("google", [f"g{i}@{'gmail.test' if i % 2 else 'googlemail.test'}"
                                for i in range(300)])
        c = e.wait_done(g, 120)
        check("google: all delivered", c["delivered"] == 300, json.dumps(c))
        st = sink_stats()[MX["google"]]
        check("google: the sink never saw more than 3 connections",
              0 < st["connections"]["peak"] <= 3, json.dumps(st["connections"]))
        cl = st["clients"]
        check("google: both source addresses were used, each at most 2 "
              "connections at once",
              set(cl) == set(SOURCES) and
              all(0 < x["peak"] <= 2 for x in cl.values()), json.dumps(cl))
        s = sites()
        check("status --sites: one site for both domains",
              "google" in s and sorted(s["google"]["domains"]) ==
              ["gmail.test", "googlemail.test"] and
              s["google"]["max_connections"] == 3, json.dumps(s.get("google")))

        # 2. Adaptive backoff: the first 20 RCPTs get "421 4.7.0 Try again
        #    later" and the connection is closed.
        y = campaign("yahoo", [f"y{i}@yahoo.test" for i in range(200)])
        c = e.wait_done(y, 180)
        check("yahoo: all delivered after the burst", c["delivered"] == 200,
              json.dumps(c))
        ev = e.events_list()
        thr = [x for x in ev if x.get("event") == "site_throttled" and
               x.get("site") == "yahoo"]
        check("yahoo: one step down to 2 connections, suspended, on the "
              "421 rule", len(thr) >= 1 and thr[0].get("connections") == 2 and
              thr[0].get("rule") == "421 *" and thr[0].get("code") == 421 and
              thr[0].get("suspended_s", 0) > 0,
              json.dumps(thr[:3]))
        check("yahoo: the cooldown makes the burst one step down",
              sum(1 for x in thr if x.get("factor", 1) < 0.5) == 0,
              json.dumps(thr[:3]))
        wait_until("yahoo recovers", lambda: any(
            x.get("event") == "site_recovered" and x.get("site") == "yahoo"
            for x in e.events_list()), 60)
        ev = e.events_list()
        rec = [x for x in ev if x.get("event") == "site_recovered" and
               x.get("site") == "yahoo"]
        check("yahoo: back to 4 connections after quiet periods",
              rec and rec[0].get("connections") == 4 and
              rec[0].get("factor") == 1, json.dumps(rec[:1]))
        st = sink_stats()[MX["yahoo"]]
        check("yahoo: the sink gave its 20 421s and never saw more than 4 "
              "connections", st["injected_failures"] == 20 and
              st["connections"]["peak"] <= 4, json.dumps(st["connections"]))
        mine = [x for x in ev if x.get("campaign") == y]
        deferred, postponed, attempt = {}, 0, {}
        for x in mine:
            if x.get("event") == "deferred":
                deferred[x["msg"]] = deferred.get(x["msg"], 0) + 1
            elif x.get("event") == "postponed":
                postponed += 1
            elif x.get("event") == "delivered":
                attempt[x["msg"]] = x.get("attempt")
        check("yahoo: messages waiting during the suspension were postponed",
              postponed > 0, f"{postponed} postponed")
        check("yahoo: postponed is not an attempt: attempt = 1 + deferrals",
              len(attempt) == 200 and all(
                  a == 1 + deferred.get(m, 0) for m, a in attempt.items()),
              json.dumps([(m, a, deferred.get(m, 0)) for m, a in
                          attempt.items() if a != 1 + deferred.get(m, 0)][:5]))
        check("yahoo: every deferral was a 421 or its closed connection",
              sum(deferred.values()) >= 20, json.dumps(deferred)[:300])

        # 3. Warm-up: day 1 of "5, 10" lets 5 through; the rest waits for
        #    tomorrow, and the count survives a restart.
        u = campaign("uol", [f"u{i}@uol.test" for i in range(12)])
        wait_until("uol postponed", lambda: sum(
            1 for x in e.events_list() if x.get("event") == "postponed" and
            x.get("campaign") == u) == 7, 60)
        s = sites()["uol"]
        check("uol: status shows day 1, cap 5, 5 sent",
              s.get("warmup") == {"day": 1, "cap": 5, "sent_today": 5} and
              s["state"] == "warm-up cap reached", json.dumps(s))
        capev = [x for x in e.events_list()
                 if x.get("event") == "site_warmup_cap"]
        check("uol: the cap is in the event log", len(capev) == 1 and
              "cap of 5" in capev[0].get("reply", ""), json.dumps(capev))
        lst = e.req({"op": "queue", "action": "list", "campaign": u,
                     "state": "queued"})
        check("uol: the 7 over the cap stay queued (not bounced)",
              lst.get("matched") == 7 or len(lst.get("messages", [])) == 7,
              json.dumps(lst)[:400])
        e.stop()
        e.start()
        u2 = campaign("uol2", [f"v{i}@uol.test" for i in range(3)])
        wait_until("uol2 postponed", lambda: sum(
            1 for x in e.events_list() if x.get("event") == "postponed" and
            x.get("campaign") == u2) == 3, 60)
        st = sink_stats()[MX["uol"]]
        check("uol: after a restart the day's count is kept: still 5 at the "
              "sink", st["messages"] == 5, json.dumps(st["messages"]))

        # 4. Rate 20/s with a burst of 5: 65 messages cannot arrive in
        #    less than (65 - 5) / 20 = 3 s.
        r = campaign("rated", [f"r{i}@rated.test" for i in range(65)])
        c = e.wait_done(r, 120)
        st = sink_stats()[MX["rated"]]
        secs = [s for s, n in st["per_second"] for _ in range(n)]
        ts = sorted(epoch(x["ts"]) for x in e.events_list()
                    if x.get("event") == "delivered" and x.get("campaign") == r)
        check("rated: all delivered, no faster than 20/s",
              c["delivered"] == 65 and ts[-1] - ts[0] >= 2.9 and
              max(secs) - min(secs) >= 2,
              f"{c['delivered']} in {ts[-1] - ts[0]:.2f} s")

        # 5. Transactional ahead of bulk inside one rate-limited site.
        bulk = campaign("bulk", [f"b{i}@rated.test" for i in range(200)])
        wait_until("bulk started", lambda: any(
            x.get("event") == "delivered" and x.get("campaign") == bulk
            for x in e.events_list()), 60)
        tx = campaign("welcome", ["novo@rated.test"], "transactional")
        wait_until("welcome delivered", lambda: any(
            x.get("event") == "delivered" and x.get("campaign") == tx
            for x in e.events_list()), 60)
        ev = e.events_list()
        t_tx = [epoch(x["ts"]) for x in ev if x.get("event") == "delivered"
                and x.get("campaign") == tx][0]
        before = sum(1 for x in ev if x.get("event") == "delivered" and
                     x.get("campaign") == bulk and epoch(x["ts"]) <= t_tx)
        check("transactional delivered while the bulk campaign still waits",
              before < 180, f"{before} bulk messages before it")
        # Fairness: a small bulk campaign submitted behind the big one gets
        # its share of the site at once instead of waiting for the end.
        small = campaign("small", [f"s{i}@rated.test" for i in range(10)])
        c = e.wait_done(small, 120)
        big = e.req({"op": "status", "id": bulk})["campaigns"][0]
        check("a small bulk campaign is not starved by a big one",
              c["delivered"] == 10 and big["state"] != "done",
              f"big campaign: {big['delivered']} delivered, {big['state']}")
        e.wait_done(bulk, 120)

        # 6. connection_rate 2/s, one message per connection: 7 messages need
        #    7 connections, no faster than (7 - 2) / 2 = 2.5 s.
        k = campaign("conns", [f"k{i}@conns.test" for i in range(7)])
        c = e.wait_done(k, 120)
        st = sink_stats()[MX["conns"]]
        ts = sorted(epoch(x["ts"]) for x in e.events_list()
                    if x.get("event") == "delivered" and x.get("campaign") == k)
        check("conns: 7 connections, no faster than 2 per second",
              c["delivered"] == 7 and st["connections"]["total"] == 7 and
              ts[-1] - ts[0] >= 2.4, f"{st['connections']} "
              f"{ts[-1] - ts[0]:.2f} s")

        # 7. Live reload, while a campaign is in flight: a new rate
        #    applies; a bad file is refused with FILE:LINE and the old
        #    settings stay (command and SIGHUP); no session is dropped, no
        #    message lost or deferred.
        conn0 = sink_stats()[MX["rated"]]["connections"]
        lr = campaign("reload", [f"l{i}@rated.test" for i in range(80)])
        wait_until("reload campaign in flight", lambda: sites().get(
            "rated", {}).get("connections", 0) > 0 and e.req(
            {"op": "status", "id": lr})["campaigns"][0]["delivered"] > 0,
            60)
        with open(e.conf) as f:
            text = f.read()
        with open(e.conf, "w") as f:
            f.write(text.replace("rate = 20/s", "rate = 600/min"))
        e.cli("config", "reload")
        check("reload: the site's rate is the new one",
              sites()["rated"]["configured_rate"] == "10/s",
              json.dumps(sites()["rated"]))
        with open(e.conf, "w") as f:
            f.write(text.replace("rate = 20/s", "rate = fast"))
        r = e.cli("config", "reload", check=False)
        out = (r.stdout + r.stderr).decode()
        check("reload: a bad rate is refused with FILE:LINE",
              r.returncode != 0 and f"{e.conf}:" in out and "rate" in out, out)
        check("reload: the old settings stay",
              sites()["rated"]["configured_rate"] == "10/s")
        e.proc.send_signal(signal.SIGHUP)       # the bad file still
        with open(e.conf, "w") as f:
            f.write(text.replace("rate = 20/s", "rate = 30/s"))
        e.proc.send_signal(signal.SIGHUP)
        wait_until("SIGHUP applied", lambda: sites()["rated"][
            "configured_rate"] == "30/s", 30)
        log = w.log("engine")
        check("SIGHUP: a bad file is refused with FILE:LINE, a good one "
              "applied", "reload refused, old settings kept: " + e.conf
              in log and "configuration reloaded from" in log, log[-1500:])
        c = e.wait_done(lr, 120)
        check("reload in flight: every message delivered, none deferred",
              c["delivered"] == 80 and c["deferrals"] == 0 and
              c["failed"] == 0 and c["bounced"] == 0, json.dumps(c))
        wait_until("sessions closed", lambda: sink_stats()[MX["rated"]][
            "connections"]["current"] == 0, 30)
        conn1 = sink_stats()[MX["rated"]]["connections"]
        opened = conn1["total"] - conn0["total"]
        quit_ = conn1["quit"] - conn0["quit"]
        check("reload in flight: no session dropped (each ended with QUIT)",
              opened > 0 and quit_ == opened, f"{opened} opened, {quit_} QUIT")

        # 8. The engine-wide connection cap ([smtp] max_connections, set by
        #    a reload): two sites allowed 10 connections each, on one sink
        #    listener, never see more than 3 together.
        with open(e.conf, "w") as f:
            f.write(text.replace("site_max_connections = 10",
                                 "site_max_connections = 10\n"
                                 "max_connections = 3"))
        e.cli("config", "reload")
        cp = campaign("cap", [f"c{i}@{'capa' if i % 2 else 'capb'}.test"
                              for i in range(120)])
        c = e.wait_done(cp, 120)
        st = sink_stats()[MX["cap"]]
        check("engine-wide cap: 120 delivered over two sites, at most 3 "
              "connections at once", c["delivered"] == 120 and
              2 <= st["connections"]["peak"] <= 3, json.dumps(
                  st["connections"]))
    finally:
        w.close()
    return finish()


if __name__ == "__main__":
    sys.exit(main())
