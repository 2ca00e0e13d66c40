/*
 * mustache — see mustache.h.
 *
 * Compilation has three passes:
 *  1. tokenize with the current delimiters into text and tag tokens; text
 *     is split after every newline so a text token is at most one line;
 *  2. standalone lines: a line holding only whitespace and tags that print
 *     nothing (sections, inverted, closing, comments, delimiters, parents,
 *     blocks — or one partial) loses its whitespace and its line break; a
 *     standalone partial or block remembers its indentation;
 *  3. build the tree, checking that sections close in order.
 *
 * Rendering walks the tree with a context stack (borrowed json_t
 * pointers), an override stack for inheritance, and a small line state:
 * `indent` is added at the start of each output line (partial indentation,
 * block re-indentation) and `strip` columns of leading whitespace are
 * removed from literal lines of a block override (its own indentation),
 * as the spec's "Block reindentation" tests require.
 */
#include "templates/mustache.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"

enum kind {
	K_TEXT, K_VAR, K_SECTION, K_INVERTED, K_PARTIAL, K_PARENT, K_BLOCK,
	/* tokens only */
	K_END, K_COMMENT, K_DELIM,
};

enum filter_op {
	F_BRL, F_DEFAULT, F_DATE, F_DATE_LONG, F_SUM, F_COUNT, F_UPPER, F_LOWER,
	F_FIRST_WORD,
};

static const struct {
	const char *name;
	enum filter_op op;
	int arg;               /* 0 none, 1 required */
} filter_table[] = {
	{ "brl", F_BRL, 0 }, { "default", F_DEFAULT, 1 }, { "date", F_DATE, 0 },
	{ "date_long", F_DATE_LONG, 0 }, { "sum", F_SUM, 1 },
	{ "count", F_COUNT, 0 }, { "upper", F_UPPER, 0 },
	{ "lower", F_LOWER, 0 }, { "first_word", F_FIRST_WORD, 0 },
};

struct filter {
	enum filter_op op;
	char *arg;
};

struct node {
	enum kind kind;
	bool raw;              /* {{{x}}} / {{&x}}: no escaping */
	bool dynamic;          /* {{>*x}} */
	bool bol;              /* text: begins a source line */
	bool standalone;
	const char *text;      /* text: into the template's copy of src */
	size_t len;
	char *name;            /* dotted name, "." for the implicit iterator */
	char **path;           /* name split at dots (NULL for ".") */
	size_t npath;
	struct node *kids;
	size_t nkids;
	char *indent;          /* standalone partial: its indentation */
	size_t site;           /* block: indentation at the site of use */
	size_t intrinsic;      /* block: indentation of its own content */
	struct filter *filters;
	size_t nfilters;
	int line, col;
};

struct mu_tpl {
	char *name;
	char *src;
	struct node root;      /* kind K_SECTION with no name */
	enum mu_escape esc;
	const mu_set *set;
};

struct mu_set {
	size_t n;
	char **names;
	mu_tpl **tpls;
};

/* ---- tokens ---- */

struct tok {
	enum kind kind;
	bool raw, dynamic, bol;
	const char *p;         /* text */
	size_t len;
	char *name;
	struct filter *filters;
	size_t nfilters;
	int line, col;
	bool standalone;
	bool dead;             /* whitespace removed by a standalone line */
	char *indent;
	size_t indent_len;     /* whitespace before the tag on its line */
	bool ws_before;        /* only whitespace precedes the tag on its line */
};

struct lexer {
	const char *name;
	const char *s, *end;
	const char *p;
	int line;
	const char *line_start;
	char otag[16], ctag[16];
	size_t olen, clen;
	struct tok *toks;
	size_t ntoks, cap;
	char *err;
	size_t errlen;
};

static int lex_fail(struct lexer *x, int line, int col, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int lex_fail(struct lexer *x, int line, int col, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	snprintf(x->err, x->errlen, "%s:%d:%d: %s", x->name, line, col, msg);
	return -1;
}

static struct tok *push_tok(struct lexer *x)
{
	if (x->ntoks == x->cap) {
		x->cap = x->cap ? x->cap * 2 : 64;
		x->toks = mem_realloc(x->toks, x->cap * sizeof *x->toks);
	}
	struct tok *t = &x->toks[x->ntoks++];
	memset(t, 0, sizeof *t);
	return t;
}

static void free_filters(struct filter *f, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(f[i].arg);
	free(f);
}

static void free_toks(struct tok *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(t[i].name);
		free(t[i].indent);
		free_filters(t[i].filters, t[i].nfilters);
	}
	free(t);
}

/* Text from x->p up to `upto`, split after each newline. */
static void emit_text(struct lexer *x, const char *upto)
{
	while (x->p < upto) {
		const char *nl = memchr(x->p, '\n', (size_t)(upto - x->p));
		const char *e = nl ? nl + 1 : upto;
		struct tok *t = push_tok(x);
		t->kind = K_TEXT;
		t->p = x->p;
		t->len = (size_t)(e - x->p);
		t->bol = x->p == x->line_start;
		x->p = e;
		if (nl) {
			x->line++;
			x->line_start = e;
		}
	}
}

static bool is_ws(char c)
{
	return c == ' ' || c == '\t';
}

static char *trim_dup(const char *a, const char *b)
{
	while (a < b && isspace((unsigned char)*a))
		a++;
	while (b > a && isspace((unsigned char)b[-1]))
		b--;
	return mem_strndup(a, (size_t)(b - a));
}

/* "name | f1 | f2: \"arg\"" → name and filters. */
static int parse_filters(struct lexer *x, struct tok *t, char *content,
	int line, int col)
{
	char *bar = NULL;
	bool q = false;
	for (char *p = content; *p; p++) {
		if (*p == '"')
			q = !q;
		else if (*p == '|' && !q) {
			bar = p;
			break;
		}
	}
	if (!bar) {
		t->name = content;
		return 0;
	}
	t->name = trim_dup(content, bar);
	char *p = bar;
	while (*p == '|') {
		p++;
		while (isspace((unsigned char)*p))
			p++;
		const char *ns = p;
		while (isalnum((unsigned char)*p) || *p == '_')
			p++;
		size_t nl = (size_t)(p - ns);
		size_t k;
		for (k = 0; k < sizeof filter_table / sizeof *filter_table; k++)
			if (strlen(filter_table[k].name) == nl &&
			    strncmp(filter_table[k].name, ns, nl) == 0)
				break;
		if (k == sizeof filter_table / sizeof *filter_table) {
			int rc = lex_fail(x, line, col, "unknown helper \"%.*s\" "
				"(known: brl, default, date, date_long, sum, count, "
				"upper, lower, first_word)", (int)nl, ns);
			free(content);
			return rc;
		}
		t->filters = mem_realloc(t->filters, (t->nfilters + 1) *
			sizeof *t->filters);
		struct filter *f = &t->filters[t->nfilters++];
		f->op = filter_table[k].op;
		f->arg = NULL;
		while (isspace((unsigned char)*p))
			p++;
		if (*p == ':') {
			p++;
			while (isspace((unsigned char)*p))
				p++;
			buf_t a = BUF_INIT;
			if (*p == '"') {
				for (p++; *p && *p != '"'; p++) {
					if (*p == '\\' && p[1])
						p++;
					buf_addc(&a, *p);
				}
				if (*p != '"') {
					buf_free(&a);
					free(content);
					return lex_fail(x, line, col, "unterminated string "
						"in the argument of \"%s\"",
						filter_table[k].name);
				}
				p++;
			} else {
				while (*p && *p != '|' && !isspace((unsigned char)*p))
					buf_addc(&a, *p++);
			}
			f->arg = buf_steal(&a, NULL);
			while (isspace((unsigned char)*p))
				p++;
		}
		if (filter_table[k].arg && !f->arg) {
			free(content);
			return lex_fail(x, line, col, "helper \"%s\" needs an "
				"argument, e.g. %s: \"...\"", filter_table[k].name,
				filter_table[k].name);
		}
		if (*p && *p != '|') {
			char bad = *p;   /* p points into content */
			free(content);
			return lex_fail(x, line, col, "unexpected \"%c\" after helper "
				"\"%s\"", bad, filter_table[k].name);
		}
	}
	free(content);
	if (!*t->name)
		return lex_fail(x, line, col, "a helper needs a variable before "
			"the \"|\"");
	return 0;
}

static int lex(struct lexer *x)
{
	strcpy(x->otag, "{{");
	strcpy(x->ctag, "}}");
	x->olen = x->clen = 2;
	x->p = x->s;
	x->line = 1;
	x->line_start = x->s;
	for (;;) {
		const char *o = memmem(x->p, (size_t)(x->end - x->p), x->otag,
			x->olen);
		if (!o) {
			emit_text(x, x->end);
			return 0;
		}
		emit_text(x, o);
		int line = x->line, col = (int)(o - x->line_start) + 1;
		const char *c = o + x->olen;
		char type = c < x->end ? *c : 0;
		enum kind kind = K_VAR;
		bool raw = false;
		switch (type) {
		case '#': kind = K_SECTION; c++; break;
		case '^': kind = K_INVERTED; c++; break;
		case '/': kind = K_END; c++; break;
		case '>': kind = K_PARTIAL; c++; break;
		case '<': kind = K_PARENT; c++; break;
		case '$': kind = K_BLOCK; c++; break;
		case '!': kind = K_COMMENT; c++; break;
		case '=': kind = K_DELIM; c++; break;
		case '&': raw = true; c++; break;
		case '{': raw = true; c++; break;
		default: break;
		}
		/* Find the closing delimiter ('}' + ctag for a triple). */
		char close[20];
		size_t cl;
		if (type == '{') {
			close[0] = '}';
			memcpy(close + 1, x->ctag, x->clen);
			cl = x->clen + 1;
		} else if (type == '=') {
			close[0] = '=';
			memcpy(close + 1, x->ctag, x->clen);
			cl = x->clen + 1;
		} else {
			memcpy(close, x->ctag, x->clen);
			cl = x->clen;
		}
		const char *e = memmem(c, (size_t)(x->end - c), close, cl);
		if (!e)
			return lex_fail(x, line, col, "unclosed tag: expected \"%.*s\"",
				(int)cl, close);
		/* Tags may span lines (comments); keep the line count right. */
		for (const char *q = o; q < e + cl; q++)
			if (*q == '\n') {
				x->line++;
				x->line_start = q + 1;
			}
		x->p = e + cl;

		if (kind == K_DELIM) {
			char *d = trim_dup(c, e);
			char *sp = d;
			while (*sp && !isspace((unsigned char)*sp))
				sp++;
			char *cs = sp;
			while (*cs && isspace((unsigned char)*cs))
				cs++;
			size_t ol = (size_t)(sp - d), clen = strlen(cs);
			if (!ol || !clen || ol >= sizeof x->otag ||
			    clen >= sizeof x->ctag || strpbrk(cs, " \t\r\n=") ||
			    memchr(d, '=', ol)) {
				free(d);
				return lex_fail(x, line, col, "bad delimiter change: "
					"expected {{=OPEN CLOSE=}} with two delimiters "
					"without spaces or '='");
			}
			memcpy(x->otag, d, ol);
			x->otag[ol] = 0;
			x->olen = ol;
			strcpy(x->ctag, cs);
			x->clen = clen;
			free(d);
		}
		struct tok *t = push_tok(x);
		t->kind = kind;
		t->raw = raw;
		t->line = line;
		t->col = col;
		if (kind == K_COMMENT || kind == K_DELIM)
			continue;
		char *content = trim_dup(c, e);
		if ((kind == K_PARTIAL || kind == K_PARENT) && content[0] == '*') {
			t->dynamic = true;
			char *n = trim_dup(content + 1, content + strlen(content));
			free(content);
			content = n;
		}
		if (!*content) {
			free(content);
			return lex_fail(x, line, col, "empty tag name");
		}
		if (kind == K_VAR && strchr(content, '|')) {
			if (parse_filters(x, t, content, line, col) < 0)
				return -1;
		} else {
			t->name = content;
		}
	}
}

static bool prints_nothing(enum kind k)
{
	return k == K_SECTION || k == K_INVERTED || k == K_END ||
		k == K_COMMENT || k == K_DELIM || k == K_PARENT || k == K_BLOCK ||
		k == K_PARTIAL;
}

/* True when a tag comes before token k on the line starting at i. */
static bool seen_before(const struct tok *t, size_t i, size_t k)
{
	for (size_t j = i; j < k; j++)
		if (t[j].kind != K_TEXT)
			return true;
	return false;
}

/* Pass 2: standalone lines. */
static void standalone(struct tok *t, size_t n)
{
	size_t i = 0;
	while (i < n) {
		/* A line: tokens up to and including a text ending in '\n'. */
		size_t j = i;
		while (j < n && !(t[j].kind == K_TEXT && t[j].len &&
		    t[j].p[t[j].len - 1] == '\n'))
			j++;
		size_t last = j < n ? j : n - 1;   /* inclusive */
		size_t tags = 0, partials = 0;
		bool ok = true;
		size_t lead = 0;       /* whitespace before the first tag */
		bool seen_tag = false;
		for (size_t k = i; k <= last && ok; k++) {
			if (t[k].kind == K_TEXT) {
				size_t l = t[k].len;
				if (l && t[k].p[l - 1] == '\n')
					l--;
				if (l && t[k].p[l - 1] == '\r' && k == last &&
				    t[k].len > l)
					l--;
				for (size_t c = 0; c < l; c++)
					if (!is_ws(t[k].p[c]))
						ok = false;
				if (!seen_tag)
					lead += l;
			} else {
				seen_tag = true;
				tags++;
				if (t[k].kind == K_PARTIAL)
					partials++;
				if (!prints_nothing(t[k].kind))
					ok = false;
			}
		}
		/* Only whitespace before each tag on this line? */
		{
			bool ws = true;
			size_t col = 0;
			for (size_t k = i; k <= last; k++) {
				if (t[k].kind == K_TEXT) {
					for (size_t c = 0; c < t[k].len; c++)
						if (is_ws(t[k].p[c]))
							col++;
						else if (t[k].p[c] != '\n' && t[k].p[c] != '\r')
							ws = false;
				} else {
					t[k].ws_before = ws;
					t[k].indent_len = ws ? col : 0;
				}
			}
		}
		if (ok && tags > 0 && (partials == 0 || tags == 1)) {
			/* The indentation of a standalone partial or parent is
			 * kept. A block opened and closed on this same line is
			 * replaced in place: its line keeps its line break. */
			buf_t ind = BUF_INIT;
			bool inline_block = false;
			for (size_t k = i; k + 1 <= last; k++)
				if (t[k].kind == K_BLOCK && t[k + 1].kind == K_END)
					inline_block = true;
			for (size_t k = i; k <= last; k++) {
				if (t[k].kind == K_TEXT) {
					size_t l = t[k].len;
					if (l && t[k].p[l - 1] == '\n')
						l--;
					if (l && t[k].p[l - 1] == '\r')
						l--;
					if (!ind.len && !seen_before(t, i, k))
						buf_add(&ind, t[k].p, l);
					if (inline_block && k == last && l < t[k].len) {
						t[k].p += l;      /* keep only the line break */
						t[k].len -= l;
						t[k].bol = false;
					} else {
						t[k].dead = true;
					}
				} else {
					t[k].standalone = true;
					t[k].indent_len = lead;
					if (t[k].kind == K_PARTIAL || t[k].kind == K_PARENT)
						t[k].indent = mem_strndup(ind.p ? ind.p : "",
							ind.len);
				}
			}
			buf_free(&ind);
		}
		i = last + 1;
	}
}

/* ---- tree ---- */

static void free_node(struct node *n)
{
	for (size_t i = 0; i < n->nkids; i++)
		free_node(&n->kids[i]);
	free(n->kids);
	free(n->name);
	for (size_t i = 0; i < n->npath; i++)
		free(n->path[i]);
	free(n->path);
	free(n->indent);
	free_filters(n->filters, n->nfilters);
}

static struct node *add_kid(struct node *p)
{
	p->kids = mem_realloc(p->kids, (p->nkids + 1) * sizeof *p->kids);
	struct node *n = &p->kids[p->nkids++];
	memset(n, 0, sizeof *n);
	return n;
}

static void split_path(struct node *n)
{
	if (strcmp(n->name, ".") == 0)
		return;
	const char *p = n->name;
	for (;;) {
		const char *d = strchr(p, '.');
		size_t l = d ? (size_t)(d - p) : strlen(p);
		n->path = mem_realloc(n->path, (n->npath + 1) * sizeof *n->path);
		n->path[n->npath++] = mem_strndup(p, l);
		if (!d)
			break;
		p = d + 1;
	}
}

static size_t lead_ws(const char *p, size_t len)
{
	size_t i = 0;
	while (i < len && is_ws(p[i]))
		i++;
	return i;
}

/* Indentation of a block's own content: its first line's. */
static size_t intrinsic(const struct node *n)
{
	for (size_t i = 0; i < n->nkids; i++) {
		const struct node *k = &n->kids[i];
		if (k->kind == K_TEXT) {
			if (k->len == 0)
				continue;
			return lead_ws(k->text, k->len);
		}
		return k->standalone ? k->site : 0;
	}
	return 0;
}

struct builder {
	struct lexer *x;
	size_t i;
};

/*
 * Build the kids of `parent` from the tokens. Returns 1 when the closing
 * tag of `open` was reached, 0 at the end of the template (an error unless
 * at the root), -1 on error.
 */
static int build(struct builder *b, struct node *parent, const struct tok *open,
	int depth)
{
	struct lexer *x = b->x;
	if (depth > MU_DEPTH_MAX)
		return lex_fail(x, open->line, open->col, "sections nested more "
			"than %d deep", MU_DEPTH_MAX);
	while (b->i < x->ntoks) {
		struct tok *t = &x->toks[b->i++];
		if (t->kind == K_COMMENT || t->kind == K_DELIM || t->dead)
			continue;
		if (t->kind == K_END) {
			if (!open)
				return lex_fail(x, t->line, t->col, "unexpected closing "
					"tag \"%s\": no section is open", t->name);
			if (strcmp(t->name, open->name) != 0)
				return lex_fail(x, t->line, t->col, "unexpected closing "
					"tag \"%s\", expected \"%s\" (opened at %d:%d)",
					t->name, open->name, open->line, open->col);
			return 1;
		}
		struct node *n = add_kid(parent);
		n->kind = t->kind;
		n->line = t->line;
		n->col = t->col;
		n->standalone = t->standalone;
		if (t->kind == K_TEXT) {
			n->text = t->p;
			n->len = t->len;
			n->bol = t->bol;
			continue;
		}
		n->raw = t->raw;
		n->dynamic = t->dynamic;
		n->name = mem_strdup(t->name);
		n->filters = t->filters;
		n->nfilters = t->nfilters;
		t->filters = NULL;
		t->nfilters = 0;
		n->indent = t->indent;
		t->indent = NULL;
		if (n->kind == K_PARTIAL && n->standalone)
			n->site = n->indent ? strlen(n->indent) : 0;
		split_path(n);
		if (t->kind == K_SECTION || t->kind == K_INVERTED ||
		    t->kind == K_PARENT || t->kind == K_BLOCK) {
			int rc = build(b, n, t, depth + 1);
			if (rc < 0)
				return rc;
			if (rc == 0)
				return lex_fail(x, t->line, t->col, "unclosed section "
					"\"%s\" (opened at %d:%d): expected {{/%s}}",
					n->name, t->line, t->col, n->name);
			if (t->kind == K_BLOCK) {
				n->intrinsic = intrinsic(n);
				n->site = t->standalone ? (n->nkids ? n->intrinsic
					: t->indent_len) : t->ws_before ? t->indent_len : 0;
			}
		}
	}
	return 0;
}

static mu_tpl *compile(const mu_set *set, const char *name, const char *src,
	size_t len, enum mu_escape esc, char *err, size_t errlen)
{
	mu_tpl *t = mem_calloc(1, sizeof *t);
	t->name = mem_strdup(name ? name : "template");
	t->src = mem_memdup(src ? src : "", len);
	t->esc = esc;
	t->set = set;
	t->root.kind = K_SECTION;
	struct lexer x = { .name = t->name, .s = t->src, .end = t->src + len,
		.err = err, .errlen = errlen };
	int rc = lex(&x);
	if (rc == 0) {
		standalone(x.toks, x.ntoks);
		struct builder b = { &x, 0 };
		rc = build(&b, &t->root, NULL, 0);
	}
	free_toks(x.toks, x.ntoks);
	if (rc < 0) {
		mu_tpl_free(t);
		return NULL;
	}
	return t;
}

mu_tpl *mu_compile(const mu_set *partials, const char *name, const char *src,
	size_t len, enum mu_escape esc, char *err, size_t errlen)
{
	return compile(partials, name, src, len, esc, err, errlen);
}

void mu_tpl_free(mu_tpl *t)
{
	if (!t)
		return;
	free_node(&t->root);
	free(t->name);
	free(t->src);
	free(t);
}

/* ---- sets ---- */

mu_set *mu_set_new(void)
{
	return mem_calloc(1, sizeof(mu_set));
}

static const mu_tpl *set_find(const mu_set *s, const char *name)
{
	if (!s)
		return NULL;
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->names[i], name) == 0)
			return s->tpls[i];
	return NULL;
}

int mu_set_add(mu_set *s, const char *name, const char *src, size_t len,
	char *err, size_t errlen)
{
	mu_tpl *t = compile(s, name, src, len, MU_ESCAPE_HTML, err, errlen);
	if (!t)
		return -1;
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->names[i], name) == 0) {
			mu_tpl_free(s->tpls[i]);
			s->tpls[i] = t;
			return 0;
		}
	s->names = mem_realloc(s->names, (s->n + 1) * sizeof *s->names);
	s->tpls = mem_realloc(s->tpls, (s->n + 1) * sizeof *s->tpls);
	s->names[s->n] = mem_strdup(name);
	s->tpls[s->n++] = t;
	return 0;
}

int mu_set_load_dir(mu_set *s, const char *dir, char *err, size_t errlen)
{
	DIR *d = opendir(dir);
	if (!d) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d))) {
		const char *dot = strrchr(e->d_name, '.');
		if (e->d_name[0] == '.' || !dot || (strcmp(dot, ".mustache") &&
		    strcmp(dot, ".html") && strcmp(dot, ".txt")))
			continue;
		buf_t path = BUF_INIT, src = BUF_INIT;
		buf_printf(&path, "%s/%s", dir, e->d_name);
		FILE *f = fopen(buf_cstr(&path), "rb");
		if (!f) {
			snprintf(err, errlen, "%s: %s", buf_cstr(&path),
				strerror(errno));
			rc = -1;
		} else {
			char tmp[8192];
			size_t n;
			while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
				buf_add(&src, tmp, n);
			fclose(f);
			char *name = mem_strndup(e->d_name, (size_t)(dot - e->d_name));
			rc = mu_set_add(s, name, src.p ? src.p : "", src.len, err,
				errlen);
			free(name);
		}
		buf_free(&path);
		buf_free(&src);
	}
	closedir(d);
	return rc;
}

void mu_set_free(mu_set *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n; i++) {
		free(s->names[i]);
		mu_tpl_free(s->tpls[i]);
	}
	free(s->names);
	free(s->tpls);
	free(s);
}

/* ---- rendering ---- */

#define STACK_MAX (MU_DEPTH_MAX * 2 + 16)

struct override {
	const struct node *parent;   /* a K_PARENT node: its K_BLOCK kids */
};

struct rstate {
	enum mu_escape esc;
	const mu_set *set;
	buf_t *out;
	const json_t *stack[STACK_MAX];
	size_t sp;
	struct override ov[MU_DEPTH_MAX];
	size_t nov;
	int depth;
	bool at_bol;           /* the output is at the start of a line */
	char indent[256];
	size_t indent_len;
	size_t strip;
	char *err;
	size_t errlen;
};

static int render_nodes(struct rstate *r, const struct node *kids, size_t n);

static const json_t *lookup(struct rstate *r, const struct node *n)
{
	if (!n->path)
		return r->sp ? r->stack[r->sp - 1] : NULL;
	const json_t *v = NULL;
	for (size_t i = r->sp; i-- > 0;) {
		if (json_is_object(r->stack[i]) &&
		    (v = json_object_get(r->stack[i], n->path[0])))
			break;
	}
	for (size_t k = 1; v && k < n->npath; k++)
		v = json_is_object(v) ? json_object_get(v, n->path[k]) : NULL;
	return v;
}

static bool truthy(const json_t *v)
{
	if (!v || json_is_null(v) || json_is_false(v))
		return false;
	if (json_is_array(v))
		return json_array_size(v) > 0;
	if (json_is_string(v))
		return json_string_length(v) > 0;
	return true;
}

/* Append `s` honouring the line state (indent at line starts). */
static void put(struct rstate *r, const char *s, size_t len, bool literal)
{
	if (len == 0)
		return;
	if (r->at_bol && r->indent_len)
		buf_add(r->out, r->indent, r->indent_len);
	buf_add(r->out, s, len);
	/* Data never starts a line that gets indented; template text does. */
	r->at_bol = literal && s[len - 1] == '\n';
}

static void put_escaped(struct rstate *r, const char *s, size_t len)
{
	if (r->esc == MU_ESCAPE_NONE) {
		put(r, s, len, false);
		return;
	}
	if (len == 0)
		return;
	if (r->at_bol && r->indent_len)
		buf_add(r->out, r->indent, r->indent_len);
	r->at_bol = false;
	const char *run = s;
	for (const char *p = s; p < s + len; p++) {
		const char *rep;
		switch (*p) {
		case '&': rep = "&amp;"; break;
		case '<': rep = "&lt;"; break;
		case '>': rep = "&gt;"; break;
		case '"': rep = "&quot;"; break;
		case '\'': rep = "&#39;"; break;
		default: continue;
		}
		buf_add(r->out, run, (size_t)(p - run));
		buf_adds(r->out, rep);
		run = p + 1;
	}
	buf_add(r->out, run, (size_t)(s + len - run));
}

static void fmt_real(double d, char *b, size_t bl)
{
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(b, bl, "%.*g", prec, d);
		if (strtod(b, NULL) == d)
			return;
	}
}

/* The printed form of a scalar into tmp (or a pointer to the string). */
static const char *scalar(const json_t *v, char *tmp, size_t tl, size_t *len)
{
	*len = 0;
	if (!v)
		return "";
	switch (json_typeof(v)) {
	case JSON_STRING:
		*len = json_string_length(v);
		return json_string_value(v);
	case JSON_INTEGER:
		snprintf(tmp, tl, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		fmt_real(json_real_value(v), tmp, tl);
		break;
	case JSON_TRUE:
		snprintf(tmp, tl, "true");
		break;
	case JSON_FALSE:
		snprintf(tmp, tl, "false");
		break;
	default:
		return "";
	}
	*len = strlen(tmp);
	return tmp;
}

/* ---- helpers (filters) ---- */

static bool number_of(const json_t *v, double *d)
{
	if (json_is_number(v)) {
		*d = json_number_value(v);
		return true;
	}
	if (!json_is_string(v))
		return false;
	char tmp[64];
	const char *s = json_string_value(v);
	size_t l = strlen(s);
	if (l == 0 || l >= sizeof tmp)
		return false;
	/* "12,90" as well as "12.90" */
	for (size_t i = 0; i <= l; i++)
		tmp[i] = s[i] == ',' ? '.' : s[i];
	char *end;
	*d = strtod(tmp, &end);
	while (isspace((unsigned char)*end))
		end++;
	return end != tmp && *end == 0 && isfinite(*d);
}

static json_t *f_brl(const json_t *v)
{
	double d;
	if (!number_of(v, &d))
		return json_string("");
	bool neg = d < 0;
	/* Round half up (away from zero) to centavos; the small epsilon
	 * corrects binary fractions such as 2.675. */
	double c = floor(fabs(d) * 100.0 + 0.5 + 1e-9);
	unsigned long long cents = (unsigned long long)c;
	char digits[32], grouped[48];
	snprintf(digits, sizeof digits, "%llu", cents / 100);
	size_t n = strlen(digits), k = 0;
	for (size_t i = 0; i < n; i++) {
		if (i && (n - i) % 3 == 0)
			grouped[k++] = '.';
		grouped[k++] = digits[i];
	}
	grouped[k] = 0;
	char out[80];
	snprintf(out, sizeof out, "%sR$ %s,%02llu", neg && cents ? "-" : "",
		grouped, cents % 100);
	return json_string(out);
}

static const char *const months[] = { "janeiro", "fevereiro", "março",
	"abril", "maio", "junho", "julho", "agosto", "setembro", "outubro",
	"novembro", "dezembro" };

static json_t *f_date(const json_t *v, bool lng)
{
	const char *s = json_string_value(v);
	int y, m, d;
	if (!s || sscanf(s, "%4d-%2d-%2d", &y, &m, &d) != 3 || m < 1 || m > 12 ||
	    d < 1 || d > 31)
		return json_string(s ? s : "");
	char out[64];
	if (lng)
		snprintf(out, sizeof out, "%d de %s de %d", d, months[m - 1], y);
	else
		snprintf(out, sizeof out, "%02d/%02d/%04d", d, m, y);
	return json_string(out);
}

static json_t *f_sum(const json_t *v, const char *arg)
{
	char a[128], *b;
	snprintf(a, sizeof a, "%s", arg);
	b = strchr(a, '*');
	if (b)
		*b++ = 0;
	double total = 0;
	size_t i;
	const json_t *it;
	json_array_foreach(v, i, it) {
		double x, y = 1;
		if (!number_of(json_object_get(it, a), &x))
			continue;
		if (b && !number_of(json_object_get(it, b), &y))
			continue;
		total += x * y;
	}
	return json_real(total);
}

/* Case mapping for ASCII and the Latin-1 supplement (à-þ ↔ À-Þ). */
static json_t *f_case(const json_t *v, bool up)
{
	char tmp[64];
	size_t len;
	const char *s = scalar(v, tmp, sizeof tmp, &len);
	char *o = mem_memdup(s, len + 1);
	unsigned char *p = (unsigned char *)o;
	for (size_t i = 0; i < len; i++) {
		if (p[i] < 0x80) {
			p[i] = (unsigned char)(up ? toupper(p[i]) : tolower(p[i]));
		} else if (p[i] == 0xc3 && i + 1 < len) {
			unsigned char c = p[i + 1];
			if (up && c >= 0xa0 && c <= 0xbe && c != 0xb7)
				p[i + 1] = (unsigned char)(c - 0x20);
			else if (!up && c >= 0x80 && c <= 0x9e && c != 0x97)
				p[i + 1] = (unsigned char)(c + 0x20);
			i++;
		}
	}
	json_t *r = json_stringn(o, len);
	free(o);
	return r ? r : json_string("");
}

static json_t *f_first_word(const json_t *v)
{
	char tmp[64];
	size_t len;
	const char *s = scalar(v, tmp, sizeof tmp, &len);
	size_t i = 0;
	while (i < len && isspace((unsigned char)s[i]))
		i++;
	size_t j = i;
	while (j < len && !isspace((unsigned char)s[j]))
		j++;
	json_t *r = json_stringn(s + i, j - i);
	return r ? r : json_string("");
}

/* Apply the filter chain; returns a new reference (never NULL). */
static json_t *apply_filters(const struct node *n, const json_t *v)
{
	json_t *cur = v ? json_incref((json_t *)v) : json_null();
	for (size_t i = 0; i < n->nfilters; i++) {
		const struct filter *f = &n->filters[i];
		json_t *next;
		switch (f->op) {
		case F_BRL: next = f_brl(cur); break;
		case F_DEFAULT:
			next = truthy(cur) ? json_incref(cur) : json_string(f->arg);
			break;
		case F_DATE: next = f_date(cur, false); break;
		case F_DATE_LONG: next = f_date(cur, true); break;
		case F_SUM: next = f_sum(cur, f->arg); break;
		case F_COUNT:
			next = json_integer(json_is_array(cur)
				? (json_int_t)json_array_size(cur) : 0);
			break;
		case F_UPPER: next = f_case(cur, true); break;
		case F_LOWER: next = f_case(cur, false); break;
		case F_FIRST_WORD: next = f_first_word(cur); break;
		default: next = json_incref(cur); break;
		}
		json_decref(cur);
		cur = next ? next : json_string("");
	}
	return cur;
}

/* ---- tree walk ---- */

static int too_deep(struct rstate *r, const struct node *n)
{
	snprintf(r->err, r->errlen, "%d:%d: \"%s\": nesting deeper than %d "
		"(recursive partial?)", n->line, n->col, n->name ? n->name : "",
		MU_DEPTH_MAX);
	return -1;
}

static const mu_tpl *partial_of(struct rstate *r, const struct node *n)
{
	if (!n->dynamic)
		return set_find(r->set, n->name);
	const json_t *v = lookup(r, n);
	return json_is_string(v) ? set_find(r->set, json_string_value(v)) : NULL;
}

/* Render another template's tree with a fresh strip and extra indent. */
static int render_tpl(struct rstate *r, const mu_tpl *t, const char *indent,
	size_t ilen, const struct node *at)
{
	if (++r->depth > MU_DEPTH_MAX)
		return too_deep(r, at);
	char saved[sizeof r->indent];
	size_t sl = r->indent_len, sstrip = r->strip;
	memcpy(saved, r->indent, sl);
	if (ilen && r->indent_len + ilen < sizeof r->indent) {
		memcpy(r->indent + r->indent_len, indent, ilen);
		r->indent_len += ilen;
	}
	r->strip = 0;
	int rc = render_nodes(r, t->root.kids, t->root.nkids);
	memcpy(r->indent, saved, sl);
	r->indent_len = sl;
	r->strip = sstrip;
	r->depth--;
	return rc;
}

static const struct node *find_override(struct rstate *r, const char *name)
{
	/* The outermost override wins (multi-level inheritance). */
	for (size_t i = 0; i < r->nov; i++) {
		const struct node *p = r->ov[i].parent;
		for (size_t k = 0; k < p->nkids; k++)
			if (p->kids[k].kind == K_BLOCK &&
			    strcmp(p->kids[k].name, name) == 0)
				return &p->kids[k];
	}
	return NULL;
}

static int render_block(struct rstate *r, const struct node *n)
{
	const struct node *o = find_override(r, n->name);
	if (!o || o == n)
		return render_nodes(r, n->kids, n->nkids);
	if (++r->depth > MU_DEPTH_MAX)
		return too_deep(r, n);
	/* Re-indent the override: drop its own indentation, add the one the
	 * block has where it is used (itself shifted by the current strip). */
	char saved[sizeof r->indent];
	size_t sl = r->indent_len, sstrip = r->strip;
	memcpy(saved, r->indent, sl);
	size_t add = n->site > r->strip ? n->site - r->strip : 0;
	if (r->indent_len + add < sizeof r->indent) {
		memset(r->indent + r->indent_len, ' ', add);
		r->indent_len += add;
	}
	r->strip = o->intrinsic;
	int rc = render_nodes(r, o->kids, o->nkids);
	memcpy(r->indent, saved, sl);
	r->indent_len = sl;
	r->strip = sstrip;
	r->depth--;
	return rc;
}

static int push(struct rstate *r, const json_t *v, const struct node *n)
{
	if (r->sp >= STACK_MAX)
		return too_deep(r, n);
	r->stack[r->sp++] = v;
	return 0;
}

static int render_nodes(struct rstate *r, const struct node *kids, size_t nk)
{
	char tmp[64];
	for (size_t i = 0; i < nk; i++) {
		const struct node *n = &kids[i];
		int rc = 0;
		switch (n->kind) {
		case K_TEXT: {
			const char *s = n->text;
			size_t len = n->len;
			if (n->bol && r->strip) {
				size_t k = 0;
				while (k < r->strip && k < len && is_ws(s[k]))
					k++;
				s += k;
				len -= k;
			}
			/* An empty line is not indented. */
			if (r->at_bol && len && (s[0] == '\n' ||
			    (s[0] == '\r' && len > 1 && s[1] == '\n'))) {
				buf_add(r->out, s, len);
				r->at_bol = true;
			} else {
				put(r, s, len, true);
			}
			break;
		}
		case K_VAR: {
			const json_t *v = lookup(r, n);
			json_t *f = n->nfilters ? apply_filters(n, v) : NULL;
			size_t len;
			const char *s = scalar(f ? f : v, tmp, sizeof tmp, &len);
			if (n->raw)
				put(r, s, len, false);
			else
				put_escaped(r, s, len);
			json_decref(f);
			break;
		}
		case K_SECTION: {
			const json_t *v = lookup(r, n);
			if (!truthy(v))
				break;
			if (++r->depth > MU_DEPTH_MAX)
				return too_deep(r, n);
			if (json_is_array(v)) {
				size_t k;
				const json_t *it;
				json_array_foreach(v, k, it) {
					if ((rc = push(r, it, n)) < 0)
						break;
					rc = render_nodes(r, n->kids, n->nkids);
					r->sp--;
					if (rc < 0)
						break;
				}
			} else if ((rc = push(r, v, n)) == 0) {
				rc = render_nodes(r, n->kids, n->nkids);
				r->sp--;
			}
			r->depth--;
			break;
		}
		case K_INVERTED:
			if (!truthy(lookup(r, n)))
				rc = render_nodes(r, n->kids, n->nkids);
			break;
		case K_PARTIAL: {
			const mu_tpl *t = partial_of(r, n);
			if (t)
				rc = render_tpl(r, t, n->indent, n->indent
					? strlen(n->indent) : 0, n);
			break;
		}
		case K_PARENT: {
			const mu_tpl *t = partial_of(r, n);
			if (!t)
				break;
			if (r->nov >= MU_DEPTH_MAX)
				return too_deep(r, n);
			r->ov[r->nov++].parent = n;
			rc = render_tpl(r, t, n->indent, n->indent
				? strlen(n->indent) : 0, n);
			r->nov--;
			break;
		}
		case K_BLOCK:
			rc = render_block(r, n);
			break;
		default:
			break;
		}
		if (rc < 0)
			return rc;
	}
	return 0;
}

int mu_render(const mu_tpl *t, const json_t *const *ctx, size_t nctx,
	buf_t *out, char *err, size_t errlen)
{
	struct rstate *r = mem_alloc(sizeof *r);
	r->esc = t->esc;
	r->set = t->set;
	r->out = out;
	r->sp = 0;
	r->nov = 0;
	r->depth = 0;
	r->at_bol = true;
	r->indent_len = 0;
	r->strip = 0;
	r->err = err;
	r->errlen = errlen;
	/* ctx[0] is searched first: it goes on top of the stack. */
	for (size_t i = nctx; i-- > 0;)
		if (ctx[i] && r->sp < 8)
			r->stack[r->sp++] = ctx[i];
	size_t before = out->len;
	int rc = render_nodes(r, t->root.kids, t->root.nkids);
	if (rc < 0) {
		buf_truncate(out, before);
		char e2[300];
		snprintf(e2, sizeof e2, "%s:%s", t->name, err);
		snprintf(err, errlen, "%s", e2);
	}
	free(r);
	return rc;
}
