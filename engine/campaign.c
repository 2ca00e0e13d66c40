/*
 * campaign — see campaign.h.
 */
#include "engine/campaign.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine/buf.h"
#include "engine/mem.h"

#define TEMPLATE_MAX (2u << 20)
#define PARTIALS_MAX 256

static int fail(char *err, size_t errlen, char *where, size_t wherelen,
	const char *w, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));

static int fail(char *err, size_t errlen, char *where, size_t wherelen,
	const char *w, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	snprintf(where, wherelen, "%s", w ? w : "");
	return -1;
}

static char *join_path(const char *base, const char *name)
{
	buf_t b = BUF_INIT;
	if (name[0] == '/' || !base || !*base)
		buf_adds(&b, name);
	else
		buf_printf(&b, "%s/%s", base, name);
	return buf_steal(&b, NULL);
}

static int read_file(const char *path, buf_t *out, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	char tmp[65536];
	size_t n;
	while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) {
		buf_add(out, tmp, n);
		if (out->len > TEMPLATE_MAX) {
			fclose(f);
			snprintf(err, errlen, "%s is larger than %u bytes", path,
				TEMPLATE_MAX);
			return -1;
		}
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		snprintf(err, errlen, "error reading %s", path);
		return -1;
	}
	if (memchr(out->p ? out->p : "", 0, out->len)) {
		snprintf(err, errlen, "%s contains a NUL byte", path);
		return -1;
	}
	return 0;
}

int64_t camp_parse_rfc3339(const char *s)
{
	int Y, M, D, h, m, sec, n = 0;
	if (sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &Y, &M, &D, &h, &m,
	    &sec, &n) != 6 || n < 19)
		return -1;
	if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
		return -1;
	const char *p = s + n;
	int ms = 0;
	if (*p == '.') {
		int digits = 0;
		for (p++; isdigit((unsigned char)*p); p++, digits++)
			if (digits < 3)
				ms = ms * 10 + (*p - '0');
		if (digits == 0)
			return -1;
		for (; digits < 3; digits++)
			ms *= 10;
	}
	long off;
	if (*p == 'Z' || *p == 'z') {
		off = 0;
		p++;
	} else if (*p == '+' || *p == '-') {
		int oh, om;
		if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2 || strlen(p) != 6)
			return -1;
		off = (oh * 60L + om) * 60L * (*p == '-' ? -1 : 1);
		p += 6;
	} else {
		return -1;
	}
	if (*p)
		return -1;
	struct tm tm = { .tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D,
		.tm_hour = h, .tm_min = m, .tm_sec = sec };
	time_t t = timegm(&tm);
	return ((int64_t)t - off) * 1000 + ms;
}

int camp_parse_mailbox(const char *s, char **name, char **addr, char *err,
	size_t errlen)
{
	*name = *addr = NULL;
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f) {
			snprintf(err, errlen, "control character in address");
			return -1;
		}
	const char *lt = strrchr(s, '<');
	if (lt) {
		const char *gt = strchr(lt, '>');
		if (!gt || gt[1] != 0) {
			snprintf(err, errlen, "expected \"Name <address>\"");
			return -1;
		}
		size_t nl = (size_t)(lt - s);
		while (nl && s[nl - 1] == ' ')
			nl--;
		const char *ns = s;
		while (nl && *ns == ' ') {
			ns++;
			nl--;
		}
		if (nl >= 2 && ns[0] == '"' && ns[nl - 1] == '"') {
			ns++;
			nl -= 2;
		}
		*name = mem_strndup(ns, nl);
		*addr = mem_strndup(lt + 1, (size_t)(gt - lt - 1));
	} else {
		*name = mem_strdup("");
		*addr = mem_strdup(s);
	}
	const char *at = strrchr(*addr, '@');
	if (!at || at == *addr || !at[1] || strchr(*addr, ' ') ||
	    strlen(*addr) > 254) {
		snprintf(err, errlen, "\"%s\" is not an e-mail address", *addr);
		free(*name);
		free(*addr);
		*name = *addr = NULL;
		return -1;
	}
	return 0;
}

/* Fields a campaign may carry; anything else is a typo worth reporting. */
static const char *const known_fields[] = {
	"name", "from", "reply_to", "subject", "html", "html_file", "text",
	"text_file", "contacts", "contacts_format", "send_at", "priority",
	"unsubscribe_url", "feedback_id", "templates_dir", "on_invalid", "vars",
	"whatsapp", NULL,
};

static bool known(const char *k)
{
	for (size_t i = 0; known_fields[i]; i++)
		if (strcmp(known_fields[i], k) == 0)
			return true;
	return false;
}

static const char *opt_str(const json_t *req, const char *k, int *bad)
{
	const json_t *v = json_object_get(req, k);
	if (!v || json_is_null(v))
		return NULL;
	if (!json_is_string(v)) {
		*bad = 1;
		return NULL;
	}
	return json_string_value(v);
}

/* Template text from `k` or `k_file`. Returns 0 (maybe nothing), -1. */
static int load_template(const json_t *req, json_t *def, const char *k,
	const char *base, char *err, size_t errlen, char *where,
	size_t wherelen)
{
	char kf[32];
	int bad = 0;
	snprintf(kf, sizeof kf, "%s_file", k);
	const char *inl = opt_str(req, k, &bad);
	const char *file = opt_str(req, kf, &bad);
	if (bad)
		return fail(err, errlen, where, wherelen, inl ? kf : k,
			"%s and %s must be strings", k, kf);
	if (inl && file)
		return fail(err, errlen, where, wherelen, k,
			"give either %s or %s, not both", k, kf);
	if (inl) {
		json_object_set_new(def, k, json_string(inl));
		return 0;
	}
	if (!file)
		return 0;
	char *path = join_path(base, file);
	buf_t b = BUF_INIT;
	int rc = read_file(path, &b, err, errlen);
	if (rc == 0) {
		json_t *s = json_stringn(b.p ? b.p : "", b.len);
		if (!s)
			rc = fail(err, errlen, where, wherelen, kf,
				"%s is not valid UTF-8", path);
		else
			json_object_set_new(def, k, s);
	} else {
		snprintf(where, wherelen, "%s", kf);
	}
	buf_free(&b);
	free(path);
	return rc;
}

/* Partials: NAME.mustache, NAME.html, NAME.txt of templates_dir. */
static int load_partials(const char *dir, json_t *def, char *err,
	size_t errlen, char *where, size_t wherelen)
{
	DIR *d = opendir(dir);
	if (!d)
		return fail(err, errlen, where, wherelen, "templates_dir",
			"cannot open %s: %s", dir, strerror(errno));
	json_t *parts = json_object();
	struct dirent *e;
	int rc = 0, n = 0;
	while (rc == 0 && (e = readdir(d))) {
		const char *dot = strrchr(e->d_name, '.');
		if (!dot || e->d_name[0] == '.' || (strcmp(dot, ".mustache") &&
		    strcmp(dot, ".html") && strcmp(dot, ".txt")))
			continue;
		if (++n > PARTIALS_MAX) {
			rc = fail(err, errlen, where, wherelen, "templates_dir",
				"%s has more than %d templates", dir, PARTIALS_MAX);
			break;
		}
		char *name = mem_strndup(e->d_name, (size_t)(dot - e->d_name));
		char *path = join_path(dir, e->d_name);
		buf_t b = BUF_INIT;
		if (json_object_get(parts, name)) {
			rc = fail(err, errlen, where, wherelen, path,
				"two templates named \"%s\" in %s", name, dir);
		} else if (read_file(path, &b, err, errlen) < 0) {
			snprintf(where, wherelen, "%s", path);
			rc = -1;
		} else {
			json_t *s = json_stringn(b.p ? b.p : "", b.len);
			if (!s)
				rc = fail(err, errlen, where, wherelen, path,
					"not valid UTF-8");
			else
				json_object_set_new(parts, name, s);
		}
		buf_free(&b);
		free(path);
		free(name);
	}
	closedir(d);
	if (rc == 0)
		json_object_set_new(def, "partials", parts);
	else
		json_decref(parts);
	return rc;
}

int camp_prepare(const json_t *req, const char *base_dir, json_t **def_out,
	char *err, size_t errlen, char *where, size_t wherelen)
{
	*def_out = NULL;
	if (!json_is_object(req))
		return fail(err, errlen, where, wherelen, "campaign",
			"a campaign is a JSON object");
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)req, k, v)
		if (!known(k))
			return fail(err, errlen, where, wherelen, k,
				"unknown campaign field \"%s\"", k);

	json_t *def = json_object();
	int bad = 0;
	const char *name = opt_str(req, "name", &bad);
	if (bad || !name || !*name || strlen(name) > 200) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "name",
			"a campaign needs a name (a string of 1 to 200 bytes)");
	}
	json_object_set_new(def, "name", json_string(name));

	/* from, reply_to */
	const char *from = opt_str(req, "from", &bad);
	char *fn, *fa, e2[200];
	if (bad || !from || camp_parse_mailbox(from, &fn, &fa, e2,
	    sizeof e2) < 0) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "from",
			"\"from\" must be \"Name <address>\"%s%s",
			from && !bad ? ": " : "", from && !bad ? e2 : "");
	}
	free(fn);
	free(fa);
	json_object_set_new(def, "from", json_string(from));
	const char *rt = opt_str(req, "reply_to", &bad);
	if (rt) {
		if (camp_parse_mailbox(rt, &fn, &fa, e2, sizeof e2) < 0) {
			json_decref(def);
			return fail(err, errlen, where, wherelen, "reply_to",
				"%s", e2);
		}
		free(fn);
		free(fa);
		json_object_set_new(def, "reply_to", json_string(rt));
	}

	/* templates */
	const char *subject = opt_str(req, "subject", &bad);
	if (bad || !subject || !*subject) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "subject",
			"a campaign needs a subject template (a string)");
	}
	json_object_set_new(def, "subject", json_string(subject));
	if (load_template(req, def, "html", base_dir, err, errlen, where,
	    wherelen) < 0 || load_template(req, def, "text", base_dir, err,
	    errlen, where, wherelen) < 0) {
		json_decref(def);
		return -1;
	}
	const char *tdir = opt_str(req, "templates_dir", &bad);
	if (tdir) {
		char *p = join_path(base_dir, tdir);
		int rc = load_partials(p, def, err, errlen, where, wherelen);
		free(p);
		if (rc < 0) {
			json_decref(def);
			return -1;
		}
	}

	/* contacts */
	const char *contacts = opt_str(req, "contacts", &bad);
	if (bad || !contacts || !*contacts) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "contacts",
			"a campaign needs \"contacts\": the path of a CSV or "
			"NDJSON file");
	}
	char *cp = join_path(base_dir, contacts);
	json_object_set_new(def, "contacts", json_string(cp));
	const char *fmt = opt_str(req, "contacts_format", &bad);
	if (!fmt) {
		size_t l = strlen(cp);
		fmt = (l > 7 && strcmp(cp + l - 7, ".ndjson") == 0) ||
			(l > 6 && strcmp(cp + l - 6, ".jsonl") == 0) ? "ndjson"
			: "csv";
	}
	free(cp);
	if (bad || (strcmp(fmt, "csv") && strcmp(fmt, "ndjson"))) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "contacts_format",
			"contacts_format is \"csv\" or \"ndjson\"");
	}
	json_object_set_new(def, "contacts_format", json_string(fmt));

	/* options */
	const char *sa = opt_str(req, "send_at", &bad);
	if (sa) {
		int64_t t = camp_parse_rfc3339(sa);
		if (t < 0) {
			json_decref(def);
			return fail(err, errlen, where, wherelen, "send_at",
				"send_at must be an RFC 3339 time such as "
				"2026-11-23T09:00:00-03:00");
		}
		json_object_set_new(def, "send_at", json_string(sa));
		json_object_set_new(def, "send_at_ms", json_integer(t));
	}
	const char *prio = opt_str(req, "priority", &bad);
	if (prio && strcmp(prio, "transactional") && strcmp(prio, "bulk")) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "priority",
			"priority is \"transactional\" or \"bulk\"");
	}
	json_object_set_new(def, "priority", json_string(prio ? prio : "bulk"));
	const char *inv = opt_str(req, "on_invalid", &bad);
	if (inv && strcmp(inv, "reject") && strcmp(inv, "skip")) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "on_invalid",
			"on_invalid is \"reject\" or \"skip\"");
	}
	json_object_set_new(def, "on_invalid",
		json_string(inv ? inv : "reject"));
	const char *uu = opt_str(req, "unsubscribe_url", &bad);
	if (uu) {
		if (strncmp(uu, "https://", 8) != 0) {
			json_decref(def);
			return fail(err, errlen, where, wherelen,
				"unsubscribe_url", "unsubscribe_url must be an "
				"https:// URL");
		}
		for (const char *p = uu; *p; p++)
			if ((unsigned char)*p <= 0x20 || *p == '<' || *p == '>' ||
			    *p == '"' || (unsigned char)*p >= 0x7f) {
				json_decref(def);
				return fail(err, errlen, where, wherelen,
					"unsubscribe_url", "unsubscribe_url contains "
					"a character that must be percent-encoded");
			}
		json_object_set_new(def, "unsubscribe_url", json_string(uu));
	}
	const char *fb = opt_str(req, "feedback_id", &bad);
	if (fb)
		json_object_set_new(def, "feedback_id", json_string(fb));
	const json_t *vars = json_object_get(req, "vars");
	if (vars) {
		if (!json_is_object(vars)) {
			json_decref(def);
			return fail(err, errlen, where, wherelen, "vars",
				"vars must be an object");
		}
		json_object_set(def, "vars", (json_t *)vars);
	}
	const json_t *wa = json_object_get(req, "whatsapp");
	if (wa) {
		const char *mode = json_string_value(json_object_get(wa, "mode"));
		const char *tpl = json_string_value(json_object_get(wa, "template"));
		const json_t *lang = json_object_get(wa, "language");
		const json_t *params = json_object_get(wa, "params");
		if (!json_is_object(wa) || !mode || (strcmp(mode, "fallback") &&
		    strcmp(mode, "both") && strcmp(mode, "only"))) {
			json_decref(def);
			return fail(err, errlen, where, wherelen, "whatsapp.mode",
				"whatsapp is an object whose mode is \"fallback\", "
				"\"both\" or \"only\"");
		}
		if (!tpl || !*tpl || strlen(tpl) > 512 || strspn(tpl,
		    "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(tpl)) {
			json_decref(def);
			return fail(err, errlen, where, wherelen, "whatsapp.template",
				"whatsapp.template is the name of an approved template "
				"(lowercase letters, digits, _)");
		}
		if (lang && (!json_is_string(lang) ||
		    !json_string_length(lang))) {
			json_decref(def);
			return fail(err, errlen, where, wherelen, "whatsapp.language",
				"whatsapp.language is a language code such as pt_BR");
		}
		size_t pi;
		const json_t *pv;
		if (params && !json_is_array(params)) {
			json_decref(def);
			return fail(err, errlen, where, wherelen, "whatsapp.params",
				"whatsapp.params is a list of Mustache strings");
		}
		json_array_foreach(params, pi, pv)
			if (!json_is_string(pv) || pi >= 64) {
				json_decref(def);
				return fail(err, errlen, where, wherelen,
					"whatsapp.params", "whatsapp.params is a list of at "
					"most 64 Mustache strings");
			}
		json_t *w2 = json_deep_copy(wa);
		if (!lang)
			json_object_set_new(w2, "language", json_string("pt_BR"));
		json_object_set_new(def, "whatsapp", w2);
	}
	if (bad) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "campaign",
			"send_at, priority, on_invalid, unsubscribe_url, "
			"feedback_id and templates_dir must be strings");
	}
	if (!json_object_get(def, "html") && !json_object_get(def, "text")) {
		json_decref(def);
		return fail(err, errlen, where, wherelen, "html",
			"a campaign needs an html or a text template (inline or "
			"_file)");
	}
	*def_out = def;
	return 0;
}

static mu_tpl *compile_field(const mu_set *set, json_t *def, const char *k,
	enum mu_escape esc, char *err, size_t errlen, char *where,
	size_t wherelen)
{
	const json_t *v = json_object_get(def, k);
	mu_tpl *t = mu_compile(set, k, json_string_value(v),
		json_string_length(v), esc, err, errlen);
	if (!t)
		snprintf(where, wherelen, "%s", k);
	return t;
}

struct camp *camp_compile(uint32_t cid, json_t *def, char *err,
	size_t errlen, char *where, size_t wherelen)
{
	struct camp *c = mem_calloc(1, sizeof *c);
	c->cid = cid;
	atomic_init(&c->refs, 1);
	c->def = json_incref(def);
	c->name = json_string_value(json_object_get(def, "name"));
	const char *prio = json_string_value(json_object_get(def, "priority"));
	c->priority = prio && strcmp(prio, "transactional") == 0
		? CAMP_TRANSACTIONAL : CAMP_BULK;
	const char *inv = json_string_value(json_object_get(def, "on_invalid"));
	c->on_invalid = inv && strcmp(inv, "skip") == 0 ? CAMP_INVALID_SKIP
		: CAMP_INVALID_REJECT;
	json_int_t sa = json_integer_value(json_object_get(def, "send_at_ms"));
	c->send_at_ms = sa > 0 ? (uint64_t)sa : 0;
	if (camp_parse_mailbox(json_string_value(json_object_get(def, "from")),
	    &c->from_name, &c->from_addr, err, errlen) < 0) {
		snprintf(where, wherelen, "from");
		goto fail;
	}
	const char *rt = json_string_value(json_object_get(def, "reply_to"));
	if (rt)
		c->reply_to = mem_strdup(rt);
	c->unsub_url = json_string_value(json_object_get(def, "unsubscribe_url"));
	c->feedback_id = json_string_value(json_object_get(def, "feedback_id"));
	const char *wm = json_string_value(json_object_get(
		json_object_get(def, "whatsapp"), "mode"));
	c->wa_mode = !wm ? CAMP_WA_NONE : strcmp(wm, "fallback") == 0
		? CAMP_WA_FALLBACK : strcmp(wm, "both") == 0 ? CAMP_WA_BOTH
		: CAMP_WA_ONLY;

	const json_t *wa = json_object_get(def, "whatsapp");
	c->wa_template = json_string_value(json_object_get(wa, "template"));
	c->wa_language = json_string_value(json_object_get(wa, "language"));

	c->partials = mu_set_new();
	const char *k;
	json_t *v;
	json_object_foreach(json_object_get(def, "partials"), k, v) {
		if (mu_set_add(c->partials, k, json_string_value(v),
		    json_string_length(v), err, errlen) < 0) {
			snprintf(where, wherelen, "templates_dir/%s", k);
			goto fail;
		}
	}
	if (!(c->subject = compile_field(c->partials, def, "subject",
	    MU_ESCAPE_NONE, err, errlen, where, wherelen)))
		goto fail;
	if (json_object_get(def, "html") && !(c->html = compile_field(
	    c->partials, def, "html", MU_ESCAPE_HTML, err, errlen, where,
	    wherelen)))
		goto fail;
	if (json_object_get(def, "text") && !(c->text = compile_field(
	    c->partials, def, "text", MU_ESCAPE_NONE, err, errlen, where,
	    wherelen)))
		goto fail;
	const json_t *params = json_object_get(wa, "params");
	size_t i;
	const json_t *pv;
	c->wa_params = mem_calloc(json_array_size(params) + 1,
		sizeof *c->wa_params);
	json_array_foreach(params, i, pv) {
		char nm[48];
		snprintf(nm, sizeof nm, "whatsapp.params.%zu", i);
		c->wa_params[i] = mu_compile(c->partials, nm,
			json_string_value(pv), json_string_length(pv),
			MU_ESCAPE_NONE, err, errlen);
		if (!c->wa_params[i]) {
			snprintf(where, wherelen, "%s", nm);
			goto fail;
		}
		c->nwa_params = i + 1;
	}
	return c;
fail:
	camp_unref(c);
	return NULL;
}

struct camp *camp_ref(struct camp *c)
{
	atomic_fetch_add(&c->refs, 1);
	return c;
}

void camp_unref(struct camp *c)
{
	if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	mu_tpl_free(c->subject);
	mu_tpl_free(c->html);
	mu_tpl_free(c->text);
	for (size_t i = 0; i < c->nwa_params; i++)
		mu_tpl_free(c->wa_params[i]);
	free(c->wa_params);
	mu_set_free(c->partials);
	free(c->from_name);
	free(c->from_addr);
	free(c->reply_to);
	json_decref(c->def);
	free(c);
}

const char *camp_contacts_path(const struct camp *c)
{
	return json_string_value(json_object_get(c->def, "contacts"));
}
