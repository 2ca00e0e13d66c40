/*
 * wa-drive — drives engine/whatsapp on a libev loop for the integration test
 * (tests/integration/test_whatsapp.py) and the bench.
 *
 *   wa-drive [-r RATE] [-c MAXCONN] [-t TIMEOUT_MS] [-x CANCEL_NTH] [-C CA] [-q]
 *            URL TOKEN PHONE_ID N TO [TO...]
 *
 * Sends N template messages (recipients cycled, one body parameter each,
 * with hostile characters), cancelling the CANCEL_NTH send (1-based) right
 * after queuing it. Prints one JSON line per result (unless -q), then
 * {"stats":...} with the achieved rate. A watchdog ends the run after 120 s
 * (exit 2). Exit 0 when every send that was not cancelled got a callback.
 */
#include <ev.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/whatsapp.h"

struct drive {
	struct ev_loop *loop;
	size_t expected, got;
	uint64_t cancelled;
	int quiet;
	int cancelled_called;
};

static void
on_result(void *arg, uint64_t id, const struct wa_result *r)
{
	struct drive *d = arg;
	if (id == d->cancelled)
		d->cancelled_called = 1;
	d->got++;
	if (!d->quiet) {
		json_t *j = json_pack("{s:I, s:s, s:i, s:i, s:i, s:s, s:s, s:s, s:I, s:I}",
		    "id", (json_int_t)id, "kind", wa_kind_name(r->kind),
		    "http", (int)r->http_status, "code", (int)r->code,
		    "subcode", (int)r->subcode, "message", r->message,
		    "message_id", r->message_id, "wa_id", r->wa_id,
		    "retry_after_ms", (json_int_t)r->retry_after_ms,
		    "ms", (json_int_t)r->ms);
		char *s = json_dumps(j, JSON_COMPACT);
		printf("%s\n", s);
		free(s);
		json_decref(j);
	}
	if (d->got >= d->expected)
		ev_break(d->loop, EVBREAK_ALL);
}

static void
watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	fprintf(stderr, "wa-drive: watchdog: giving up after 120 s\n");
	ev_break(loop, EVBREAK_ALL);
}

int
main(int argc, char **argv)
{
	struct wa_config cfg = { 0 };
	struct drive d = { 0 };
	long cancel_nth = 0;
	int opt;
	while ((opt = getopt(argc, argv, "r:c:t:x:C:q")) != -1) {
		switch (opt) {
		case 'r': cfg.rate = atof(optarg); break;
		case 'c': cfg.max_connections = (unsigned)atoi(optarg); break;
		case 't': cfg.timeout_ms = strtoull(optarg, NULL, 10); break;
		case 'x': cancel_nth = atol(optarg); break;
		case 'C': cfg.ca_file = optarg; break;
		case 'q': d.quiet = 1; break;
		default: return 64;
		}
	}
	if (argc - optind < 5) {
		fprintf(stderr, "usage: wa-drive [-r RATE] [-c MAXCONN] [-t MS] [-x NTH] [-q] "
		    "URL TOKEN PHONE_ID N TO...\n");
		return 64;
	}
	cfg.api_url = argv[optind];
	cfg.token = argv[optind + 1];
	cfg.phone_number_id = argv[optind + 2];
	size_t n = strtoull(argv[optind + 3], NULL, 10);
	char **to = argv + optind + 4;
	size_t nto = (size_t)(argc - optind - 4);
	cfg.max_queue = n + 1;

	d.loop = ev_default_loop(0);
	char err[512];
	wa_client *c = wa_new(d.loop, &cfg, err, sizeof err);
	if (c == NULL) {
		fprintf(stderr, "wa-drive: %s\n", err);
		return 1;
	}
	d.expected = n - (cancel_nth > 0 && (size_t)cancel_nth <= n);
	ev_timer wd;
	ev_timer_init(&wd, watchdog, 120., 0.);
	ev_timer_start(d.loop, &wd);
	ev_unref(d.loop);

	double t0 = ev_time();
	for (size_t i = 0; i < n; i++) {
		char p[96];
		snprintf(p, sizeof p, "Cliente \"%zu\"\n<São Paulo>", i);
		const char *params[] = { p };
		struct wa_msg m = { to[i % nto], "carrinho_abandonado", "pt_BR", params, 1 };
		uint64_t id = wa_send(c, &m, on_result, &d);
		if (id == 0) {
			fprintf(stderr, "wa-drive: queue full\n");
			return 1;
		}
		if ((long)(i + 1) == cancel_nth) {
			if (wa_cancel(c, id) != 0) {
				fprintf(stderr, "wa-drive: cancel failed\n");
				return 1;
			}
			d.cancelled = id;
		}
	}
	if (d.expected > 0)
		ev_run(d.loop, 0);
	double secs = ev_time() - t0;
	struct wa_stats st;
	wa_get_stats(c, &st);
	printf("{\"stats\":{\"requests\":%" PRIu64 ",\"sent\":%" PRIu64 ",\"retried\":%"
	    PRIu64 ",\"failed\":%" PRIu64 ",\"paused\":%" PRIu64 ",\"connects\":%" PRIu64
	    ",\"results\":%zu,\"cancelled_called\":%d,\"seconds\":%.3f,\"rate\":%.1f}}\n",
	    st.requests, st.sent, st.retried, st.failed, st.paused, st.connects, d.got,
	    d.cancelled_called, secs, secs > 0 ? (double)d.got / secs : 0.);
	ev_ref(d.loop);
	ev_timer_stop(d.loop, &wd);
	wa_free(c);
	ev_loop_destroy(d.loop);
	return d.got == d.expected && !d.cancelled_called ? 0 : 2;
}
