/*
 * Runs one file of the official Mustache spec (../shared/data/mustache-spec)
 * against templates/mustache: every test's template, partials and data,
 * compared byte for byte with the expected output. A missing file fails.
 *
 * usage: test_mustache_spec FILE.json
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "templates/mustache.h"

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s SPEC.json\n", argv[0]);
		return 2;
	}
	json_error_t je;
	json_t *spec = json_load_file(argv[1], 0, &je);
	if (!spec) {
		fprintf(stderr, "%s:%d: %s\n", argv[1], je.line, je.text);
		return 1;
	}
	size_t i, failed = 0, n = 0;
	json_t *t;
	json_array_foreach(json_object_get(spec, "tests"), i, t) {
		const char *name = json_string_value(json_object_get(t, "name"));
		json_t *tpl = json_object_get(t, "template");
		const char *expected = json_string_value(json_object_get(t,
			"expected"));
		char err[512] = "";
		mu_set *set = mu_set_new();
		const char *k;
		json_t *v;
		int ok = 1;
		json_object_foreach(json_object_get(t, "partials"), k, v)
			if (mu_set_add(set, k, json_string_value(v),
			    json_string_length(v), err, sizeof err) < 0)
				ok = 0;
		mu_tpl *mt = ok ? mu_compile(set, "template",
			json_string_value(tpl), json_string_length(tpl),
			MU_ESCAPE_HTML, err, sizeof err) : NULL;
		buf_t out = BUF_INIT;
		const json_t *ctx[1] = { json_object_get(t, "data") };
		if (mt && mu_render(mt, ctx, 1, &out, err, sizeof err) < 0)
			mt = (mu_tpl_free(mt), NULL);
		n++;
		if (!mt || strcmp(buf_cstr(&out), expected) != 0) {
			failed++;
			char *ts = json_dumps(tpl, JSON_ENCODE_ANY);
			char *es = json_dumps(json_object_get(t, "expected"),
				JSON_ENCODE_ANY);
			json_t *g = json_stringn(out.p ? out.p : "", out.len);
			char *gs = json_dumps(g, JSON_ENCODE_ANY);
			printf("FAIL %s\n  template: %s\n  expected: %s\n  got:      "
				"%s\n%s%s%s", name, ts, es, mt ? gs : "(error)",
				mt ? "" : "  error:    ", mt ? "" : err, mt ? "" : "\n");
			free(ts);
			free(es);
			free(gs);
			json_decref(g);
		}
		mu_tpl_free(mt);
		mu_set_free(set);
		buf_free(&out);
	}
	printf("%s: %zu tests, %zu failed\n", argv[1], n, failed);
	json_decref(spec);
	return failed ? 1 : 0;
}
