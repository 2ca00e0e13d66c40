/*
 * contacts — see contacts.h.
 *
 * The CSV parser is fed one physical line at a time so that we always know
 * the line number; libcsv keeps the state of a quoted field that spans
 * lines, and a record is attributed to the line where it started.
 */
#include "engine/contacts.h"

#include <csv.h>
#include <stdbool.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/mem.h"

struct csv_state {
	const char *path;
	ct_cb cb;
	void *arg;
	unsigned long line;        /* physical line being fed */
	unsigned long row_line;    /* where the current record started */
	bool in_row;
	/* header */
	char **cols;
	size_t ncols;
	bool have_header;
	/* current record */
	json_t *obj;
	size_t nfield;
	size_t row_bytes;
	int stop;                  /* callback result or -1 on error */
	char *err;
	size_t errlen;
	char *where;
	size_t wherelen;
};

static int st_fail(struct csv_state *s, unsigned long line, const char *col,
	const char *fmt, const char *arg)
{
	if (s->stop)
		return s->stop;
	snprintf(s->err, s->errlen, fmt, arg);
	if (col)
		snprintf(s->where, s->wherelen, "%s:%lu: column \"%s\"", s->path,
			line, col);
	else
		snprintf(s->where, s->wherelen, "%s:%lu", s->path, line);
	s->stop = -1;
	return -1;
}

static void field_cb(void *data, size_t len, void *vs)
{
	struct csv_state *s = vs;
	if (s->stop)
		return;
	if (!s->in_row) {
		s->in_row = true;
		s->row_line = s->line;
		s->nfield = 0;
		s->row_bytes = 0;
	}
	const char *p = data ? data : "";
	size_t i = s->nfield++;
	s->row_bytes += len;
	if (len > CT_FIELD_MAX || s->row_bytes > CT_LINE_MAX) {
		st_fail(s, s->row_line, NULL, "%s", "value too long");
		return;
	}
	if (!s->have_header) {
		/* Header names: trimmed, a UTF-8 BOM removed, unique. */
		if (i == 0 && len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0) {
			p += 3;
			len -= 3;
		}
		while (len && (p[0] == ' ' || p[0] == '\t')) {
			p++;
			len--;
		}
		while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		char *name = mem_strndup(p, len);
		if (!*name || strlen(name) != len) {
			free(name);
			st_fail(s, s->row_line, NULL, "%s",
				"empty column name in the header row");
			return;
		}
		for (size_t k = 0; k < s->ncols; k++)
			if (strcmp(s->cols[k], name) == 0) {
				st_fail(s, s->row_line, name, "%s",
					"duplicate column name in the header row");
				free(name);
				return;
			}
		s->cols = mem_realloc(s->cols, (s->ncols + 1) * sizeof *s->cols);
		s->cols[s->ncols++] = name;
		return;
	}
	if (i >= s->ncols) {
		char n[32];
		snprintf(n, sizeof n, "%zu", s->ncols);
		st_fail(s, s->row_line, NULL,
			"more fields than the header's %s columns", n);
		return;
	}
	if (!s->obj)
		s->obj = json_object();
	json_t *v = json_stringn(p, len);
	if (!v) {
		st_fail(s, s->row_line, s->cols[i], "%s",
			"value is not valid UTF-8 (or contains NUL)");
		return;
	}
	json_object_set_new(s->obj, s->cols[i], v);
}

static void row_cb(int term, void *vs)
{
	struct csv_state *s = vs;
	(void)term;
	if (s->stop) {
		json_decref(s->obj);
		s->obj = NULL;
		s->in_row = false;
		return;
	}
	if (!s->in_row) {
		/* libcsv reports an empty line as a row without fields. */
		return;
	}
	s->in_row = false;
	if (!s->have_header) {
		s->have_header = true;
		return;
	}
	if (s->nfield != s->ncols) {
		char n[64];
		snprintf(n, sizeof n, "%zu fields where the header has %zu",
			s->nfield, s->ncols);
		st_fail(s, s->row_line, NULL, "%s", n);
	} else {
		int r = s->cb(s->arg, s->obj, s->row_line);
		if (r)
			s->stop = r;
	}
	json_decref(s->obj);
	s->obj = NULL;
}

static int read_csv(FILE *f, const char *path, ct_cb cb, void *arg,
	char *err, size_t errlen, char *where, size_t wherelen)
{
	struct csv_parser p;
	struct csv_state s = { .path = path, .cb = cb, .arg = arg,
		.err = err, .errlen = errlen, .where = where,
		.wherelen = wherelen };
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL) != 0) {
		snprintf(err, errlen, "cannot initialise the CSV parser");
		return -1;
	}
	while (!s.stop && (n = getline(&line, &cap, f)) >= 0) {
		s.line++;
		if ((size_t)n > CT_LINE_MAX) {
			st_fail(&s, s.line, NULL, "%s", "line too long");
			break;
		}
		if (csv_parse(&p, line, (size_t)n, field_cb, row_cb, &s) !=
		    (size_t)n && !s.stop)
			st_fail(&s, s.in_row ? s.row_line : s.line, NULL,
				"malformed CSV: %s", csv_strerror(csv_error(&p)));
	}
	if (!s.stop && ferror(f))
		st_fail(&s, s.line, NULL, "read error: %s", strerror(errno));
	if (!s.stop && csv_fini(&p, field_cb, row_cb, &s) != 0 && !s.stop)
		st_fail(&s, s.row_line, NULL, "malformed CSV: %s",
			"unterminated quoted field at end of file");
	if (!s.stop && !s.have_header)
		st_fail(&s, 1, NULL, "%s", "the file is empty: a header row "
			"naming the columns (email, phone, ...) is required");
	csv_free(&p);
	json_decref(s.obj);
	for (size_t i = 0; i < s.ncols; i++)
		free(s.cols[i]);
	free(s.cols);
	free(line);
	return s.stop;
}

static int read_ndjson(FILE *f, const char *path, ct_cb cb, void *arg,
	char *err, size_t errlen, char *where, size_t wherelen)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned long ln = 0;
	int rc = 0;
	while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
		ln++;
		size_t len = (size_t)n;
		while (len && (line[len - 1] == '\n' || line[len - 1] == '\r' ||
		    line[len - 1] == ' ' || line[len - 1] == '\t'))
			len--;
		if (len == 0)
			continue;
		if (len > CT_LINE_MAX) {
			snprintf(err, errlen, "line too long");
			snprintf(where, wherelen, "%s:%lu", path, ln);
			rc = -1;
			break;
		}
		json_error_t je;
		json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
		if (!o || !json_is_object(o)) {
			snprintf(err, errlen, "%s", o ? "a contact line must be a "
				"JSON object" : je.text);
			snprintf(where, wherelen, "%s:%lu:%d", path, ln,
				o ? 1 : je.column);
			json_decref(o);
			rc = -1;
			break;
		}
		rc = cb(arg, o, ln);
		json_decref(o);
	}
	if (rc == 0 && ferror(f)) {
		snprintf(err, errlen, "read error: %s", strerror(errno));
		snprintf(where, wherelen, "%s", path);
		rc = -1;
	}
	free(line);
	return rc;
}

int ct_read(const char *path, const char *format, ct_cb cb, void *arg,
	char *err, size_t errlen, char *where, size_t wherelen)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "cannot open the contacts file: %s",
			strerror(errno));
		snprintf(where, wherelen, "%s", path);
		return -1;
	}
	int rc = strcmp(format, "ndjson") == 0
		? read_ndjson(f, path, cb, arg, err, errlen, where, wherelen)
		: read_csv(f, path, cb, arg, err, errlen, where, wherelen);
	fclose(f);
	return rc;
}
