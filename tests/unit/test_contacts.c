/* Unit tests for engine/contacts: CSV and NDJSON contact lists, and the
 * file:line(:column) of every kind of error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/buf.h"
#include "engine/contacts.h"

struct got {
	buf_t out;   /* "line:json\n" per contact */
	int n;
};

static int collect(void *arg, json_t *c, unsigned long line)
{
	struct got *g = arg;
	char *s = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
	buf_printf(&g->out, "%lu:%s\n", line, s);
	free(s);
	g->n++;
	return 0;
}

struct tcase {
	const char *name;
	const char *format;
	const char *content;
	int rc;
	const char *expect;    /* contacts, or the error's where + ": " + err */
};

static const struct tcase cases[] = {
	{ "simple", "csv", "email,first_name\na@b.test,João\nc@d.test,\n", 0,
	  "2:{\"email\":\"a@b.test\",\"first_name\":\"João\"}\n"
	  "3:{\"email\":\"c@d.test\",\"first_name\":\"\"}\n" },
	{ "crlf-bom-quotes", "csv",
	  "\xef\xbb\xbf" "email, name \r\n\"x@y.test\",\"Silva, \"\"Zé\"\"\"\r\n",
	  0, "2:{\"email\":\"x@y.test\",\"name\":\"Silva, \\\"Zé\\\"\"}\n" },
	{ "multiline-field", "csv",
	  "email,note\na@b.test,\"line1\nline2\"\nc@d.test,x\n", 0,
	  "2:{\"email\":\"a@b.test\",\"note\":\"line1\\nline2\"}\n"
	  "4:{\"email\":\"c@d.test\",\"note\":\"x\"}\n" },
	{ "blank-lines", "csv", "email\n\na@b.test\n\n", 0,
	  "3:{\"email\":\"a@b.test\"}\n" },
	{ "too-few-fields", "csv", "email,name,city\na@b.test,x,y\nc@d.test,z\n",
	  -1, "F:3: 2 fields where the header has 3" },
	{ "too-many-fields", "csv", "email\na@b.test,x\n", -1,
	  "F:2: more fields than the header's 1 columns" },
	{ "bad-quote", "csv", "email,name\na@b.test,ab\"c\"\n", -1,
	  "F:2: malformed CSV" },
	{ "unterminated", "csv", "email,name\na@b.test,\"abc\n", -1,
	  "F:2: malformed CSV: unterminated quoted field at end of file" },
	{ "dup-header", "csv", "email,email\n", -1,
	  "F:1: column \"email\": duplicate column name in the header row" },
	{ "empty-header", "csv", "email,,x\n", -1,
	  "F:1: empty column name in the header row" },
	{ "empty-file", "csv", "", -1, "F:1: the file is empty" },
	{ "bad-utf8", "csv", "email,name\na@b.test,Jo\xe3o\n", -1,
	  "F:2: column \"name\": value is not valid UTF-8" },
	{ "ndjson", "ndjson",
	  "{\"email\":\"a@b.test\",\"cart\":[{\"name\":\"Café\",\"price\":9.5}]}\n"
	  "\n{\"email\":\"c@d.test\"}\r\n", 0,
	  "1:{\"cart\":[{\"name\":\"Café\",\"price\":9.5}],\"email\":\"a@b.test\"}\n"
	  "3:{\"email\":\"c@d.test\"}\n" },
	{ "ndjson-bad", "ndjson", "{\"email\":\"a@b.test\"}\n{\"email\":\n", -1,
	  "F:2:" },
	{ "ndjson-not-object", "ndjson", "[1,2]\n", -1,
	  "F:1:1: a contact line must be a JSON object" },
};

static void test_cases(void **state)
{
	(void)state;
	char path[] = "/tmp/carteiro-test-contacts-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		const struct tcase *t = &cases[i];
		FILE *f = fopen(path, "wb");
		fputs(t->content, f);
		fclose(f);
		struct got g = { BUF_INIT, 0 };
		char err[256] = "", where[512] = "";
		int rc = ct_read(path, t->format, collect, &g, err, sizeof err,
			where, sizeof where);
		if (rc != t->rc)
			fail_msg("%s: rc %d, err %s at %s", t->name, rc, err, where);
		if (rc == 0) {
			if (strcmp(buf_cstr(&g.out), t->expect) != 0)
				fail_msg("%s: got\n%s\nexpected\n%s", t->name,
					buf_cstr(&g.out), t->expect);
		} else {
			char full[900];
			/* "F" stands for the file name */
			snprintf(full, sizeof full, "F%s: %s",
				where + strlen(path), err);
			if (strncmp(where, path, strlen(path)) != 0 ||
			    strncmp(full, t->expect, strlen(t->expect)) != 0)
				fail_msg("%s: got \"%s\" (where %s), expected \"%s\"",
					t->name, full, where, t->expect);
		}
		buf_free(&g.out);
	}
	unlink(path);
}

static void test_missing_file(void **state)
{
	(void)state;
	char err[256], where[256];
	int rc = ct_read("/nonexistent/contacts.csv", "csv", collect, NULL, err,
		sizeof err, where, sizeof where);
	assert_int_equal(rc, -1);
	assert_string_equal(where, "/nonexistent/contacts.csv");
	assert_non_null(strstr(err, "No such file"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cases),
		cmocka_unit_test(test_missing_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
