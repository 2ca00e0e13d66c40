/* Unit tests for templates/mustache beyond the official spec: error
 * positions, carteiro's helpers, escaping modes, empty-string falsiness,
 * layered contexts, hostile data, recursion bounds, concurrent rendering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "templates/mustache.h"

static char *render(const char *tpl, const char *data_json, int esc)
{
	char err[512];
	json_error_t je;
	json_t *data = json_loads(data_json, 0, &je);
	if (!data)
		fail_msg("bad test data: %s", je.text);
	mu_tpl *t = mu_compile(NULL, "t", tpl, strlen(tpl),
		esc ? MU_ESCAPE_HTML : MU_ESCAPE_NONE, err, sizeof err);
	if (!t)
		fail_msg("compile %s: %s", tpl, err);
	buf_t out = BUF_INIT;
	const json_t *ctx[1] = { data };
	assert_int_equal(mu_render(t, ctx, 1, &out, err, sizeof err), 0);
	mu_tpl_free(t);
	json_decref(data);
	char *s = buf_steal(&out, NULL);
	return s ? s : strdup("");
}

struct rcase {
	const char *tpl, *data, *expect;
};

static const struct rcase helpers[] = {
	{ "{{ p | brl }}", "{\"p\":1234.5}", "R$ 1.234,50" },
	{ "{{ p | brl }}", "{\"p\":0}", "R$ 0,00" },
	{ "{{ p | brl }}", "{\"p\":-3}", "-R$ 3,00" },
	{ "{{ p | brl }}", "{\"p\":\"12.9\"}", "R$ 12,90" },
	{ "{{ p | brl }}", "{\"p\":\"12,9\"}", "R$ 12,90" },
	{ "{{ p | brl }}", "{\"p\":2.675}", "R$ 2,68" },
	{ "{{ p | brl }}", "{\"p\":1234567890.129}", "R$ 1.234.567.890,13" },
	{ "{{ p | brl }}", "{\"p\":\"abc\"}", "" },
	{ "{{ n | default: \"cliente\" }}", "{}", "cliente" },
	{ "{{ n | default: \"cliente\" }}", "{\"n\":\"\"}", "cliente" },
	{ "{{ n | default: \"cliente\" }}", "{\"n\":\"Ana\"}", "Ana" },
	{ "{{ d | date }}", "{\"d\":\"2026-11-22T10:00:00-03:00\"}", "22/11/2026" },
	{ "{{ d | date_long }}", "{\"d\":\"2026-03-05\"}", "5 de março de 2026" },
	{ "{{ c | sum: \"price\" | brl }}",
	  "{\"c\":[{\"price\":10},{\"price\":\"2.5\"}]}", "R$ 12,50" },
	{ "{{ c | sum: \"price*qty\" | brl }}",
	  "{\"c\":[{\"price\":19.9,\"qty\":2},{\"price\":5,\"qty\":3}]}",
	  "R$ 54,80" },
	{ "{{ c | count }}", "{\"c\":[1,2,3]}", "3" },
	{ "{{ n | upper }}", "{\"n\":\"joão conceição\"}", "JOÃO CONCEIÇÃO" },
	{ "{{ n | lower }}", "{\"n\":\"ÂNGELA ÍRIS\"}", "ângela íris" },
	{ "{{ n | first_word }}", "{\"n\":\" Maria José Silva\"}", "Maria" },
	{ "{{{ n | first_word | upper }}}", "{\"n\":\"inês <b>\"}", "INÊS" },
	/* Empty strings are falsy, like empty lists. */
	{ "{{^n}}Olá, cliente{{/n}}{{#n}}Olá, {{n}}{{/n}}", "{\"n\":\"\"}",
	  "Olá, cliente" },
	/* Data is never re-interpreted. */
	{ "{{n}}", "{\"n\":\"{{x}}\"}", "{{x}}" },
};

static void test_helpers(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof helpers / sizeof *helpers; i++) {
		char *s = render(helpers[i].tpl, helpers[i].data, 0);
		if (strcmp(s, helpers[i].expect) != 0)
			fail_msg("%s with %s: got \"%s\", expected \"%s\"",
				helpers[i].tpl, helpers[i].data, s, helpers[i].expect);
		free(s);
	}
}

static void test_escaping(void **state)
{
	(void)state;
	const char *d = "{\"n\":\"<a href='x'>&\\\"</a>\"}";
	char *h = render("{{n}}", d, 1);
	assert_string_equal(h, "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
	char *t = render("{{n}}", d, 0);
	assert_string_equal(t, "<a href='x'>&\"</a>");
	free(h);
	free(t);
}

struct ecase {
	const char *tpl, *expect;
};

static const struct ecase errors[] = {
	{ "Olá\n  {{#cart}}\nx", "t:2:3: unclosed section \"cart\" (opened at 2:3)" },
	{ "{{#a}}{{/b}}", "t:1:7: unexpected closing tag \"b\", expected \"a\"" },
	{ "x {{/a}}", "t:1:3: unexpected closing tag \"a\": no section is open" },
	{ "ab\ncd {{name", "t:2:4: unclosed tag: expected \"}}\"" },
	{ "{{ }}", "t:1:1: empty tag name" },
	{ "{{=<% =}}", "t:1:1: bad delimiter change" },
	{ "{{ p | money }}", "t:1:1: unknown helper \"money\"" },
	{ "{{ p | default }}", "t:1:1: helper \"default\" needs an argument" },
	{ "{{ | brl }}", "t:1:1: a helper needs a variable" },
};

static void test_errors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof errors / sizeof *errors; i++) {
		char err[512] = "";
		mu_tpl *t = mu_compile(NULL, "t", errors[i].tpl,
			strlen(errors[i].tpl), MU_ESCAPE_HTML, err, sizeof err);
		if (t || strncmp(err, errors[i].expect, strlen(errors[i].expect)))
			fail_msg("%s: got \"%s\", expected \"%s\"", errors[i].tpl,
				err, errors[i].expect);
	}
}

static void test_layers(void **state)
{
	(void)state;
	char err[256];
	json_t *contact = json_pack("{ss}", "name", "Conceição");
	json_t *vars = json_pack("{ssss}", "name", "ignored", "store", "Loja");
	mu_tpl *t = mu_compile(NULL, "t", "{{name}} @ {{store}}", 20,
		MU_ESCAPE_NONE, err, sizeof err);
	assert_non_null(t);
	const json_t *ctx[2] = { contact, vars };
	buf_t out = BUF_INIT;
	assert_int_equal(mu_render(t, ctx, 2, &out, err, sizeof err), 0);
	assert_string_equal(buf_cstr(&out), "Conceição @ Loja");
	buf_free(&out);
	mu_tpl_free(t);
	json_decref(contact);
	json_decref(vars);
}

static void test_hostile(void **state)
{
	(void)state;
	/* 100 KB values with NUL, CR/LF and tags stay data. */
	char *big = malloc(100001);
	for (int i = 0; i < 100000; i++)
		big[i] = "ab\r\n{}\0<"[i % 8];
	json_t *d = json_object();
	json_object_set_new(d, "v", json_stringn(big, 100000));
	char err[256];
	mu_tpl *t = mu_compile(NULL, "t", "[{{{v}}}]", 9, MU_ESCAPE_NONE, err,
		sizeof err);
	const json_t *ctx[1] = { d };
	buf_t out = BUF_INIT;
	assert_int_equal(mu_render(t, ctx, 1, &out, err, sizeof err), 0);
	assert_int_equal(out.len, 100002);
	assert_memory_equal(out.p + 1, big, 100000);
	buf_free(&out);
	mu_tpl_free(t);
	json_decref(d);
	free(big);

	/* A partial that includes itself forever stops with an error. */
	mu_set *s = mu_set_new();
	assert_int_equal(mu_set_add(s, "loop", "x{{>loop}}", 10, err,
		sizeof err), 0);
	t = mu_compile(s, "t", "{{>loop}}", 9, MU_ESCAPE_NONE, err, sizeof err);
	json_t *e = json_object();
	ctx[0] = e;
	assert_int_equal(mu_render(t, ctx, 1, &out, err, sizeof err), -1);
	assert_non_null(strstr(err, "nesting deeper"));
	assert_int_equal(out.len, 0);   /* nothing half-rendered */
	buf_free(&out);
	mu_tpl_free(t);
	mu_set_free(s);
	json_decref(e);

	/* Deeply nested sections in a template are refused at compile. */
	buf_t deep = BUF_INIT;
	for (int i = 0; i < 200; i++)
		buf_adds(&deep, "{{#a}}");
	for (int i = 0; i < 200; i++)
		buf_adds(&deep, "{{/a}}");
	assert_null(mu_compile(NULL, "t", deep.p, deep.len, MU_ESCAPE_NONE, err,
		sizeof err));
	buf_free(&deep);
}

struct thr {
	const mu_tpl *t;
	const json_t *data;
	char *out;
};

static void *thr_main(void *arg)
{
	struct thr *x = arg;
	char err[128];
	buf_t out = BUF_INIT;
	const json_t *ctx[1] = { x->data };
	for (int i = 0; i < 2000; i++) {
		buf_reset(&out);
		mu_render(x->t, ctx, 1, &out, err, sizeof err);
	}
	x->out = buf_steal(&out, NULL);
	return NULL;
}

static void test_threads(void **state)
{
	(void)state;
	char err[256];
	mu_set *s = mu_set_new();
	const char *item = "<li>{{name}}: {{ price | brl }}</li>\n";
	assert_int_equal(mu_set_add(s, "item", item, strlen(item), err,
		sizeof err), 0);
	const char *src = "<h1>{{ first_name | default: \"cliente\" }}</h1>\n"
		"{{#cart}}{{>item}}{{/cart}}Total {{ cart | sum: \"price\" | brl }}";
	mu_tpl *t = mu_compile(s, "t", src, strlen(src), MU_ESCAPE_HTML, err,
		sizeof err);
	assert_non_null(t);
	json_t *d = json_loads("{\"first_name\":\"João\",\"cart\":[{\"name\":"
		"\"Café\",\"price\":9.9},{\"name\":\"Pão <fresco>\",\"price\":1}]}",
		0, NULL);
	struct thr a = { t, d, NULL }, b = { t, d, NULL };
	pthread_t ta, tb;
	pthread_create(&ta, NULL, thr_main, &a);
	pthread_create(&tb, NULL, thr_main, &b);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	assert_string_equal(a.out, b.out);
	assert_string_equal(a.out, "<h1>João</h1>\n<li>Café: R$ 9,90</li>\n"
		"<li>Pão &lt;fresco&gt;: R$ 1,00</li>\nTotal R$ 10,90");
	free(a.out);
	free(b.out);
	json_decref(d);
	mu_tpl_free(t);
	mu_set_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_helpers),
		cmocka_unit_test(test_escaping),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_layers),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_threads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
