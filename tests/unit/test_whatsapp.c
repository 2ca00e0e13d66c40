/* Unit tests for engine/whatsapp: classification, body, URL rule, replies,
 * and the token never appearing in error or result text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "engine/whatsapp.h"

struct class_case {
	long http, code, subcode;
	enum wa_kind want;
};

static const struct class_case class_cases[] = {
	{ 200, 0, 0, WA_SENT },
	{ 201, 0, 0, WA_SENT },
	/* throughput and rate limits */
	{ 429, 0, 0, WA_RETRY },
	{ 429, 130429, 0, WA_RETRY },
	{ 400, 4, 0, WA_RETRY },
	{ 400, 80007, 0, WA_RETRY },
	{ 400, 131056, 0, WA_RETRY },
	/* server trouble, transport */
	{ 500, 0, 0, WA_RETRY },
	{ 502, 0, 0, WA_RETRY },
	{ 503, 131016, 0, WA_RETRY },
	{ 500, 131000, 0, WA_RETRY },
	{ 400, 1, 0, WA_RETRY },
	{ 400, 2, 0, WA_RETRY },
	{ 0, 0, 0, WA_RETRY },
	{ 408, 0, 0, WA_RETRY },
	/* ecosystem */
	{ 400, 131049, 0, WA_RETRY_LATE },
	/* this contact or this message */
	{ 400, 131026, 0, WA_FAILED },
	{ 400, 100, 0, WA_FAILED },
	{ 400, 100, 2494010, WA_FAILED },
	{ 400, 131050, 0, WA_FAILED },
	{ 400, 131008, 0, WA_FAILED },
	{ 400, 131009, 0, WA_FAILED },
	{ 400, 132000, 0, WA_FAILED },
	{ 400, 132001, 0, WA_FAILED },
	{ 400, 132018, 0, WA_FAILED },
	{ 404, 0, 0, WA_FAILED },
	{ 400, 0, 0, WA_FAILED },
	{ 400, 999999, 0, WA_FAILED },
	{ 200, 131026, 0, WA_FAILED },
	/* the account: pause the channel */
	{ 401, 190, 0, WA_CHANNEL_PAUSED },
	{ 400, 190, 463, WA_CHANNEL_PAUSED },
	{ 401, 0, 0, WA_CHANNEL_PAUSED },
	{ 403, 10, 0, WA_CHANNEL_PAUSED },
	{ 403, 200, 0, WA_CHANNEL_PAUSED },
	{ 400, 131031, 0, WA_CHANNEL_PAUSED },
	{ 400, 131042, 0, WA_CHANNEL_PAUSED },
	{ 400, 133010, 0, WA_CHANNEL_PAUSED },
	/* odd */
	{ 302, 0, 0, WA_RETRY },
};

static void
test_classify(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof class_cases / sizeof class_cases[0]; i++) {
		const struct class_case *t = &class_cases[i];
		enum wa_kind k = wa_classify(t->http, t->code, t->subcode);
		if (k != t->want)
			fail_msg("case %zu: HTTP %ld code %ld/%ld: got %s, want %s", i,
			    t->http, t->code, t->subcode, wa_kind_name(k), wa_kind_name(t->want));
	}
	assert_int_equal(wa_default_delay_ms(429, 130429), 2000);
	assert_int_equal(wa_default_delay_ms(400, 131056), 60000);
	assert_int_equal(wa_default_delay_ms(500, 0), 5000);
	assert_string_equal(wa_kind_name(WA_CHANNEL_PAUSED), "channel_paused");
}

static json_t *
body_of(const struct wa_msg *m)
{
	buf_t b = BUF_INIT;
	char err[256];
	int r = wa_build_body(m, &b, err, sizeof err);
	if (r < 0)
		fail_msg("build: %s", err);
	json_error_t je;
	json_t *j = json_loads(b.p, 0, &je);
	if (j == NULL)
		fail_msg("not JSON: %s: %s", je.text, b.p);
	buf_free(&b);
	return j;
}

static void
test_body_shape(void **state)
{
	(void)state;
	const char *params[] = { "Maria", "R$ 1.234,56" };
	struct wa_msg m = { "5511999990001", "carrinho_abandonado", "pt_BR", params, 2 };
	json_t *j = body_of(&m);
	json_t *want = json_pack("{s:s, s:s, s:s, s:{s:s, s:{s:s}, s:[{s:s, s:[{s:s,s:s},{s:s,s:s}]}]}}",
	    "messaging_product", "whatsapp", "to", "5511999990001", "type", "template",
	    "template", "name", "carrinho_abandonado", "language", "code", "pt_BR",
	    "components", "type", "body", "parameters", "type", "text", "text", "Maria",
	    "type", "text", "text", "R$ 1.234,56");
	assert_true(json_equal(j, want));
	json_decref(j);
	json_decref(want);

	/* no params: no components */
	struct wa_msg m0 = { "5511999990001", "hello_world", "en_US", NULL, 0 };
	j = body_of(&m0);
	assert_null(json_object_get(json_object_get(j, "template"), "components"));
	json_decref(j);
}

static void
test_body_hostile(void **state)
{
	(void)state;
	const char *hostile[] = {
		"\"}],\"to\":\"5500000000000\",\"x\":[{\"",
		"line1\r\nAuthorization: Bearer stolen\r\n",
		"tab\tand \\ backslash \x01 ctl",
		"São Paulo — ação 🎉",
	};
	struct wa_msg m = { "5511999990001", "t", "pt_BR", hostile, 4 };
	json_t *j = body_of(&m);
	assert_string_equal(json_string_value(json_object_get(j, "to")), "5511999990001");
	json_t *ps = json_object_get(json_array_get(json_object_get(
	    json_object_get(j, "template"), "components"), 0), "parameters");
	assert_int_equal(json_array_size(ps), 4);
	for (size_t i = 0; i < 4; i++)
		assert_string_equal(json_string_value(json_object_get(json_array_get(ps, i),
		    "text")), hostile[i]);
	json_decref(j);

	/* The raw body has no bare CR or LF. */
	buf_t b = BUF_INIT;
	char err[256];
	assert_int_equal(wa_build_body(&m, &b, err, sizeof err), 0);
	assert_null(memchr(b.p, '\r', b.len));
	assert_null(memchr(b.p, '\n', b.len));
	buf_free(&b);
}

struct bad_body {
	struct wa_msg m;
	const char *err;
};

static void
test_body_refused(void **state)
{
	(void)state;
	char *big = malloc(WA_PARAM_MAX + 2);
	memset(big, 'a', WA_PARAM_MAX + 1);
	big[WA_PARAM_MAX + 1] = '\0';
	/* exactly 1024 code points of 2-byte characters is fine */
	char *edge = malloc(2 * WA_PARAM_MAX + 1);
	for (size_t i = 0; i < WA_PARAM_MAX; i++)
		memcpy(edge + 2 * i, "\xc3\xa3", 2);
	edge[2 * WA_PARAM_MAX] = '\0';
	const char *p_big[] = { "ok", big };
	const char *p_edge[] = { edge };
	const char *p_bad_utf8[] = { "\xff\xfe" };
	const char *p_empty[] = { "" };
	const struct bad_body cases[] = {
		{ { "5511999990001", "t", "pt_BR", p_big, 2 },
		  "whatsapp: param 2: 1025 characters, the Cloud API allows 1024" },
		{ { "5511999990001", "t", "pt_BR", p_bad_utf8, 1 },
		  "whatsapp: param 1: not valid UTF-8" },
		{ { "5511999990001", "t", "pt_BR", p_empty, 1 },
		  "whatsapp: param 1: empty (the Cloud API refuses empty parameters)" },
		{ { "+5511999990001", "t", "pt_BR", NULL, 0 },
		  "whatsapp: to: not an E.164 number (7-15 digits, no '+')" },
		{ { "55119999900011234", "t", "pt_BR", NULL, 0 },
		  "whatsapp: to: not an E.164 number (7-15 digits, no '+')" },
		{ { NULL, "t", "pt_BR", NULL, 0 },
		  "whatsapp: to: not an E.164 number (7-15 digits, no '+')" },
		{ { "5511999990001", "Bad-Name", "pt_BR", NULL, 0 },
		  "whatsapp: template: name must be 1-512 of a-z, 0-9, _" },
		{ { "5511999990001", "t", "pt\"BR", NULL, 0 },
		  "whatsapp: language: not a language code (e.g. pt_BR)" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		buf_t b = BUF_INIT;
		char err[256] = "";
		if (wa_build_body(&cases[i].m, &b, err, sizeof err) == 0)
			fail_msg("case %zu accepted", i);
		if (strcmp(err, cases[i].err) != 0)
			fail_msg("case %zu: got \"%s\"", i, err);
		buf_free(&b);
	}
	struct wa_msg ok = { "5511999990001", "t", "pt_BR", p_edge, 1 };
	json_decref(body_of(&ok));
	free(big);
	free(edge);
}

struct url_case {
	const char *url;
	int ok;
};

static void
test_url_rule(void **state)
{
	(void)state;
	static const struct url_case cases[] = {
		{ "https://graph.facebook.com/v21.0", 1 },
		{ "https://10.0.0.1:8443/v21.0", 1 },
		{ "http://127.0.0.1:8080/v21.0", 1 },
		{ "http://127.50.0.9/v21.0", 1 },
		{ "http://localhost:9000/v21.0", 1 },
		{ "http://[::1]:9000/v21.0", 1 },
		{ "http://graph.facebook.com/v21.0", 0 },
		{ "http://10.0.0.1/v21.0", 0 },
		{ "http://128.0.0.1/v21.0", 0 },
		{ "http://127.0.0.1.evil.com/v21.0", 0 },
		{ "http://[::2]/v21.0", 0 },
		{ "ftp://127.0.0.1/v21.0", 0 },
		{ "https://user:pw@graph.facebook.com/v21.0", 0 },
		{ "not a url", 0 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char err[256] = "";
		int r = wa_check_url(cases[i].url, err, sizeof err);
		if ((r == 0) != cases[i].ok)
			fail_msg("%s: got %d (%s)", cases[i].url, r, err);
	}
	char err[256];
	assert_int_equal(wa_check_url("http://example.com/v21.0", err, sizeof err), -1);
	assert_non_null(strstr(err, "loopback"));
}

static void
test_parse_reply(void **state)
{
	(void)state;
	struct wa_result r;
	char s[3][WA_MESSAGE_MAX];
	const char *ok = "{\"messaging_product\":\"whatsapp\",\"contacts\":[{\"input\":"
	    "\"5511999990001\",\"wa_id\":\"5511999990001\"}],\"messages\":[{\"id\":"
	    "\"wamid.HBgM\",\"message_status\":\"accepted\"}]}";
	wa_parse_reply(200, ok, strlen(ok), &r, s);
	assert_int_equal(r.kind, WA_SENT);
	assert_string_equal(r.message_id, "wamid.HBgM");
	assert_string_equal(r.wa_id, "5511999990001");

	const char *e = "{\"error\":{\"message\":\"(#131026) Message undeliverable\\r\\nX: y\","
	    "\"type\":\"OAuthException\",\"code\":131026,\"error_subcode\":2494010,"
	    "\"error_data\":{\"messaging_product\":\"whatsapp\",\"details\":\"not on WhatsApp\"},"
	    "\"fbtrace_id\":\"Az\"}}";
	wa_parse_reply(400, e, strlen(e), &r, s);
	assert_int_equal(r.kind, WA_FAILED);
	assert_int_equal(r.code, 131026);
	assert_int_equal(r.subcode, 2494010);
	assert_string_equal(r.message, "(#131026) Message undeliverable  X: y: not on WhatsApp");

	wa_parse_reply(200, "{}", 2, &r, s);     /* 2xx without id: never retried */
	assert_int_equal(r.kind, WA_FAILED);

	const char *html = "<html>\n<b>Bad gateway</b></html>";
	wa_parse_reply(502, html, strlen(html), &r, s);
	assert_int_equal(r.kind, WA_RETRY);
	assert_string_equal(r.message, "HTTP 502: <html> <b>Bad gateway</b></html>");

	/* huge server message: bounded */
	buf_t b = BUF_INIT;
	buf_adds(&b, "{\"error\":{\"code\":100,\"message\":\"");
	for (int i = 0; i < 5000; i++)
		buf_adds(&b, "\\u00e9");
	buf_adds(&b, "\"}}");
	wa_parse_reply(400, b.p, b.len, &r, s);
	assert_int_equal(r.kind, WA_FAILED);
	assert_int_equal(strlen(r.message), WA_MESSAGE_MAX - 1);
	buf_free(&b);
}

/* The token never shows in wa_new's errors, whatever else is wrong. */
static void
test_token_secret(void **state)
{
	(void)state;
	static const char tok[] = "EAAGsecretTOKEN123";
	struct ev_loop *loop = ev_loop_new(0);
	char err[512];
	struct wa_config bad[] = {
		{ .api_url = "http://graph.facebook.com/v21.0", .phone_number_id = "123", .token = tok },
		{ .api_url = "http://127.0.0.1:1/v21.0", .phone_number_id = "12a", .token = tok },
		{ .api_url = "http://127.0.0.1:1/v21.0", .phone_number_id = "123",
		  .token = "EAAGsecret\r\nX-Injected: 1" },
		{ .api_url = "http://127.0.0.1:1/v21.0", .phone_number_id = "123", .token = "" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		err[0] = '\0';
		assert_null(wa_new(loop, &bad[i], err, sizeof err));
		assert_true(err[0] != '\0');
		assert_null(strstr(err, "secret"));
	}
	struct wa_config good = { .api_url = "http://127.0.0.1:1/v21.0",
	    .phone_number_id = "123", .token = tok };
	wa_client *c = wa_new(loop, &good, err, sizeof err);
	assert_non_null(c);
	assert_int_equal(wa_set_token(c, "new\ttoken", err, sizeof err), -1);
	assert_null(strstr(err, "token\t"));
	assert_int_equal(wa_set_token(c, "EAAGnewTOKEN", err, sizeof err), 0);
	wa_free(c);
	ev_loop_destroy(loop);
}

/* A refused message ends in WA_FAILED from the loop, never inside wa_send. */
struct rec {
	int calls;
	enum wa_kind kind;
	char msg[WA_MESSAGE_MAX];
};

static void
rec_cb(void *arg, uint64_t id, const struct wa_result *r)
{
	(void)id;
	struct rec *rc = arg;
	rc->calls++;
	rc->kind = r->kind;
	snprintf(rc->msg, sizeof rc->msg, "%s", r->message);
}

static void
test_refused_async(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(0);
	char err[256];
	struct wa_config cfg = { .api_url = "http://127.0.0.1:1/v21.0",
	    .phone_number_id = "123", .token = "T", .max_queue = 2 };
	wa_client *c = wa_new(loop, &cfg, err, sizeof err);
	assert_non_null(c);
	struct rec a = { 0 }, b = { 0 };
	struct wa_msg m = { "12", "t", "pt_BR", NULL, 0 };
	uint64_t id = wa_send(c, &m, rec_cb, &a);
	assert_true(id > 0);
	assert_int_equal(a.calls, 0);
	uint64_t id2 = wa_send(c, &m, rec_cb, &b);
	assert_true(id2 > id);
	assert_int_equal(wa_send(c, &m, rec_cb, &b), 0);   /* queue full */
	assert_int_equal(wa_cancel(c, id2), 0);
	assert_int_equal(wa_cancel(c, id2), -1);
	ev_run(loop, EVRUN_NOWAIT);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.kind, WA_FAILED);
	assert_non_null(strstr(a.msg, "to: not an E.164"));
	assert_int_equal(b.calls, 0);
	struct wa_stats st;
	wa_get_stats(c, &st);
	assert_int_equal(st.failed, 1);
	assert_int_equal(st.queued, 0);
	wa_free(c);
	ev_loop_destroy(loop);
}

/* The bucket on a fake clock: burst, then exactly `rate` per second. */
static void
test_bucket(void **state)
{
	(void)state;
	struct wa_bucket b;
	wa_bucket_init(&b, 80, 8, 1000.0);
	int taken = 0;
	for (int i = 0; i < 20; i++)
		taken += wa_bucket_take(&b, 1000.0) == 0;
	assert_int_equal(taken, 8);                          /* the burst */
	double w = wa_bucket_take(&b, 1000.0);
	assert_true(w > 0.0124 && w < 0.0126);               /* 1/80 s */
	/* one simulated minute, asking every millisecond: 80/s, never more */
	taken = 0;
	for (int ms = 1; ms <= 60000; ms++)
		while (wa_bucket_take(&b, 1000.0 + ms / 1000.0) == 0)
			taken++;
	assert_true(taken >= 4799 && taken <= 4800);
	/* idle for an hour: still only the burst */
	taken = 0;
	while (wa_bucket_take(&b, 4600.0) == 0)
		taken++;
	assert_int_equal(taken, 8);
	/* a clock going back adds nothing */
	assert_true(wa_bucket_take(&b, 10.0) > 0);
	/* rate below 1/s: burst 1 */
	wa_bucket_init(&b, 0.5, 0, 0.0);
	assert_true(wa_bucket_take(&b, 0.0) == 0);
	w = wa_bucket_take(&b, 0.0);
	assert_true(w > 1.99 && w < 2.01);
	assert_true(wa_bucket_take(&b, 2.0) == 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_body_shape),
		cmocka_unit_test(test_body_hostile),
		cmocka_unit_test(test_body_refused),
		cmocka_unit_test(test_url_rule),
		cmocka_unit_test(test_parse_reply),
		cmocka_unit_test(test_token_secret),
		cmocka_unit_test(test_refused_async),
		cmocka_unit_test(test_bucket),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
