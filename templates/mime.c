/*
 * mime — build one complete RFC 5322 / MIME message from rendered parts.
 *
 * Contract
 *   mime_build() appends a canonical message to the caller's buffer or
 *   appends nothing and reports the field at fault. Guarantees, whatever the
 *   data:
 *   - every line ends with CRLF, there is no bare CR, bare LF or NUL;
 *   - no line exceeds 998 octets; header lines are folded at <= 78 octets
 *     (a quoted display name made of specials may reach ~125);
 *   - a header value from data can never begin a new header line: C0
 *     controls and DEL become a space, whitespace runs collapse to one space
 *     and the value is trimmed, then it is folded by us (CRLF + space);
 *   - data that looks like an encoded word ("=?") or cannot be folded (a
 *     word longer than 70 octets) or is not ASCII is sent as RFC 2047
 *     encoded words (UTF-8, Q unless it is over 1.25x the B length; each word <= 75
 *     octets, split only between UTF-8 characters);
 *   - a body can never close or open a MIME part: quoted-printable and
 *     base64 never contain the boundary ("=_" cannot occur in them) and a
 *     7bit body is only used when it does not contain the delimiter.
 *   Body encoding rule (per part, after CRLF normalisation):
 *     7bit             pure ASCII (TAB allowed, no other control), every line
 *                      <= 78 octets, no trailing whitespace, no delimiter;
 *     base64           more than 1 octet in 3 would need escaping in QP
 *                      (non-ASCII, controls, '='): QP would then be over
 *                      1.67x the text, 25% more than base64, and unreadable;
 *     quoted-printable otherwise (Portuguese text: accents here and there).
 *   Nothing is kept between calls; scratch memory is per call.
 */
#include "templates/mime.h"
#include "engine/mem.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define FOLD_AT 78      /* preferred header line length */
#define EW_MAX 75       /* RFC 2047: an encoded word is at most 75 octets */
#define EW_OVERHEAD 12  /* "=?utf-8?q?" + "?=" */
#define PLAIN_WORD_MAX 70
#define QP_LINE 76

static const char hexdig[] = "0123456789ABCDEF";
static const char b64[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void
seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* ---- header writer: tracks the column so that it can fold ---- */

typedef struct hw {
	buf_t *out;
	size_t col;
} hw;

static void
hw_start(hw *w, const char *name)
{
	buf_adds(w->out, name);
	buf_addc(w->out, ':');
	w->col = strlen(name) + 1;
}

/* Append one unbreakable token, preceded by a space or by a fold. */
static void
hw_token(hw *w, const char *tok, size_t n)
{
	if (w->col + 1 + n > FOLD_AT && w->col > 1) {
		buf_add(w->out, "\r\n", 2);
		w->col = 0;
	}
	buf_addc(w->out, ' ');
	buf_add(w->out, tok, n);
	w->col += 1 + n;
}

static void
hw_end(hw *w)
{
	buf_add(w->out, "\r\n", 2);
	w->col = 0;
}

/* ---- value sanitising ---- */

/*
 * Copy `s` into `dst` with controls turned into spaces, whitespace runs
 * collapsed and both ends trimmed. Returns false if longer than `max`.
 */
static bool
sanitize(const char *s, buf_t *dst, size_t max)
{
	bool space = false;

	buf_reset(dst);
	if (s == NULL)
		return true;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		unsigned char c = *p;
		if (c < 0x20 || c == 0x7f || c == ' ') {
			space = true;
			continue;
		}
		if (space && dst->len > 0)
			buf_addc(dst, ' ');
		space = false;
		buf_addc(dst, (char)c);
		if (dst->len > max)
			return false;
	}
	buf_cstr(dst);
	return true;
}

static bool
is_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return false;
	return true;
}

static size_t
longest_word(const char *s, size_t n)
{
	size_t best = 0, cur = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == ' ') {
			cur = 0;
			continue;
		}
		if (++cur > best)
			best = cur;
	}
	return best;
}

/* Emit space-separated words of `s`, folding between them. */
static void
hw_words(hw *w, const char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t j = i;
		while (j < n && s[j] != ' ')
			j++;
		if (j > i)
			hw_token(w, s + i, j - i);
		i = j + 1;
	}
}

/* ---- RFC 2047 encoded words ---- */

/* Length of the UTF-8 character at s (1 for stray bytes). */
static size_t
u8len(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	size_t want = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 :
	    (c >> 3) == 30 ? 4 : 1;
	size_t i = 1;

	while (i < want && i < n && (s[i] & 0xc0) == 0x80)
		i++;
	return i;
}

/* Q is used in phrases too (RFC 2047 5(3)): only this set is literal. */
static bool
q_literal(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '!' || c == '*' || c == '+' ||
	    c == '-' || c == '/' || c == ' ';
}

static size_t
q_cost(const unsigned char *s, size_t n)
{
	size_t c = 0;

	for (size_t i = 0; i < n; i++)
		c += q_literal(s[i]) ? 1 : 3;
	return c;
}

static void
q_emit(buf_t *o, const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];
		if (c == ' ')
			buf_addc(o, '_');
		else if (q_literal(c))
			buf_addc(o, (char)c);
		else {
			char t[3] = { '=', hexdig[c >> 4], hexdig[c & 15] };
			buf_add(o, t, 3);
		}
	}
}

static void
b64_emit(buf_t *o, const unsigned char *s, size_t n)
{
	size_t i = 0;
	char t[4];

	for (; i + 3 <= n; i += 3) {
		unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
		t[0] = b64[v >> 18];
		t[1] = b64[(v >> 12) & 63];
		t[2] = b64[(v >> 6) & 63];
		t[3] = b64[v & 63];
		buf_add(o, t, 4);
	}
	if (n - i == 1) {
		unsigned v = (unsigned)s[i] << 16;
		t[0] = b64[v >> 18];
		t[1] = b64[(v >> 12) & 63];
		t[2] = t[3] = '=';
		buf_add(o, t, 4);
	} else if (n - i == 2) {
		unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8;
		t[0] = b64[v >> 18];
		t[1] = b64[(v >> 12) & 63];
		t[2] = b64[(v >> 6) & 63];
		t[3] = '=';
		buf_add(o, t, 4);
	}
}

/*
 * Emit `s` as a run of encoded words separated by folds. Each word holds
 * whole UTF-8 characters and fits both in 75 octets and in the line.
 */
static void
hw_encoded(hw *w, const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t blen = 4 * ((n + 2) / 3);
	/* Q keeps Portuguese readable; B once Q is clearly longer */
	bool useq = q_cost(s, n) <= blen + blen / 4;
	size_t i = 0;

	while (i < n) {
		size_t room = FOLD_AT > w->col + 1 ? FOLD_AT - w->col - 1 : 0;
		if (room > EW_MAX)
			room = EW_MAX;
		if (room < EW_OVERHEAD + 12) {
			buf_add(w->out, "\r\n", 2);
			w->col = 0;
			continue;
		}
		size_t cap = room - EW_OVERHEAD, j = i, cost = 0, after_sp = 0;
		while (j < n) {
			size_t cl = u8len(s + j, n - j);
			size_t nc = useq ? cost + q_cost(s + j, cl) :
			    4 * ((j + cl - i + 2) / 3);
			if (nc > cap && j > i) {
				/* end the word after a space when there is one:
				 * readers that wrongly keep the folding whitespace
				 * between encoded words (CPython in display names)
				 * then only add a space next to a space */
				if (after_sp > i)
					j = after_sp;
				break;
			}
			cost = nc;
			j += cl;
			if (s[j - 1] == ' ')
				after_sp = j;
		}
		size_t before = w->out->len;
		buf_adds(w->out, useq ? " =?utf-8?q?" : " =?utf-8?b?");
		if (useq)
			q_emit(w->out, s + i, j - i);
		else
			b64_emit(w->out, s + i, j - i);
		buf_add(w->out, "?=", 2);
		w->col += w->out->len - before;
		i = j;
	}
}

/* Unstructured value (Subject, extra headers): plain or encoded words. */
static void
hw_unstructured(hw *w, const char *s, size_t n)
{
	if (is_ascii(s, n) && strstr(s, "=?") == NULL &&
	    longest_word(s, n) <= PLAIN_WORD_MAX)
		hw_words(w, s, n);
	else
		hw_encoded(w, s, n);
}

/* ---- addresses ---- */

static bool
is_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

static bool
addr_ok(const char *a)
{
	size_t n, at = 0, nat = 0;

	if (a == NULL)
		return false;
	n = strlen(a);
	if (n < 3 || n > MIME_MAX_ADDR)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];
		if (c == '@') {
			at = i;
			nat++;
			continue;
		}
		if (c <= 0x20 || c >= 0x7f || strchr("()<>[]:;\\,\"", c))
			return false;
	}
	return nat == 1 && at > 0 && at < n - 1;
}

static bool
plain_word(const char *s, size_t n)
{
	if (n > PLAIN_WORD_MAX || memmem(s, n, "=?", 2) != NULL)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_atext((unsigned char)s[i]))
			return false;
	return true;
}

/*
 * A display name that needs encoding: words that are plain atoms stay
 * plain, each run of other words becomes encoded words. Keeping encoded
 * words apart where possible matters because readers disagree on the
 * whitespace between two encoded words in a phrase (RFC 2047 drops it,
 * CPython's email keeps it).
 */
static void
hw_phrase(hw *w, const char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t e = i;
		while (e < n && s[e] != ' ')
			e++;
		if (plain_word(s + i, e - i)) {
			hw_token(w, s + i, e - i);
			i = e + 1;
			continue;
		}
		/* extend the run over the following non-plain words */
		size_t r = e;
		while (r < n) {
			size_t k = r + 1;
			while (k < n && s[k] != ' ')
				k++;
			if (plain_word(s + r + 1, k - r - 1))
				break;
			r = k;
		}
		hw_encoded(w, s + i, r - i);
		i = r + 1;
	}
}

/* "Name: display <addr>" with the display name made safe. */
static void
hw_address(hw *w, const char *hname, const char *name, const char *addr,
    buf_t *scratch)
{
	hw_start(w, hname);
	sanitize(name, scratch, 1024);	/* longer names are cut below */
	size_t n = scratch->len;
	if (n > 512) {
		/* bound the header; cut on a character boundary */
		n = 512;
		while (n > 0 && ((unsigned char)scratch->p[n] & 0xc0) == 0x80)
			n--;
		while (n > 0 && scratch->p[n - 1] == ' ')
			n--;
	}
	const char *s = scratch->p;
	if (n == 0) {
		hw_token(w, addr, strlen(addr));
		hw_end(w);
		return;
	}
	bool atoms = true;
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && !is_atext((unsigned char)s[i]))
			atoms = false;
	if (!is_ascii(s, n) || n > 60 || (memmem(s, n, "=?", 2) != NULL)) {
		hw_phrase(w, s, n);
	} else if (atoms) {
		hw_words(w, s, n);
	} else {
		char q[2 * 60 + 3];
		size_t k = 0;
		q[k++] = '"';
		for (size_t i = 0; i < n; i++) {
			if (s[i] == '"' || s[i] == '\\')
				q[k++] = '\\';
			q[k++] = s[i];
		}
		q[k++] = '"';
		hw_token(w, q, k);
	}
	char a[MIME_MAX_ADDR + 3];
	int an = snprintf(a, sizeof a, "<%s>", addr);
	hw_token(w, a, (size_t)an);
	hw_end(w);
}

/* ---- bodies ---- */

/* CRLF-normalise, drop NUL, make sure it ends with CRLF (if non-empty).
 * Writes straight into reserved storage: this runs on every message. */
static void
normalize_body(const char *in, size_t len, buf_t *o)
{
	buf_reset(o);
	buf_reserve(o, 2 * len + 2);	/* worst case: every octet a bare LF */
	char *w = o->p;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c == '\r') {
			if (i + 1 < len && in[i + 1] == '\n')
				i++;
			*w++ = '\r';
			*w++ = '\n';
		} else if (c == '\n') {
			*w++ = '\r';
			*w++ = '\n';
		} else if (c != '\0') {
			*w++ = c;
		}
	}
	o->len = (size_t)(w - o->p);
	if (o->len > 0 && o->p[o->len - 1] != '\n')
		buf_add(o, "\r\n", 2);
	buf_cstr(o);
}

/* 1 = octet QP may leave literal (space and tab too, except at a line
 * end); built once, read-only afterwards. */
static const unsigned char qp_lit[256] = {
	['\t'] = 1, [' '] = 1, ['!'] = 1, ['"'] = 1, ['#'] = 1, ['$'] = 1,
	['%'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1, [')'] = 1, ['*'] = 1,
	['+'] = 1, [','] = 1, ['-'] = 1, ['.'] = 1, ['/'] = 1, ['0'] = 1,
	['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
	['7'] = 1, ['8'] = 1, ['9'] = 1, [':'] = 1, [';'] = 1, ['<'] = 1,
	['>'] = 1, ['?'] = 1, ['@'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1,
	['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1,
	['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1,
	['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,
	['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['['] = 1,
	['\\'] = 1, [']'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['a'] = 1,
	['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1,
	['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1,
	['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,
	['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1,
	['z'] = 1, ['{'] = 1, ['|'] = 1, ['}'] = 1, ['~'] = 1,
};

enum cte { CTE_7BIT, CTE_QP, CTE_B64 };
static const char *const cte_names[] = { "7bit", "quoted-printable", "base64" };

/* `s` is normalised (CRLF lines). `delim` may be NULL. */
static enum cte
pick(const char *s, size_t n, const char *delim)
{
	size_t esc = 0, maxline = 0, i = 0;
	bool trailing_ws = false;

	while (i < n) {
		const char *cr = memchr(s + i, '\r', n - i);
		while (cr != NULL && !((size_t)(cr - s) + 1 < n && cr[1] == '\n'))
			cr = memchr(cr + 1, '\r', n - (size_t)(cr + 1 - s));
		size_t e = cr ? (size_t)(cr - s) : n;
		if (e - i > maxline)
			maxline = e - i;
		if (e > i && (s[e - 1] == ' ' || s[e - 1] == '\t'))
			trailing_ws = true;
		for (; i < e; i++)
			esc += !qp_lit[(unsigned char)s[i]];
		i = cr ? e + 2 : n;
	}
	/* esc counts '=' too; 7bit only needs the absence of the others */
	bool clean = true;
	if (esc > 0)
		for (i = 0; i < n && clean; i++) {
			unsigned char c = (unsigned char)s[i];
			if (c >= 0x80 || c == 0x7f || (c < 0x20 && c != '\t' &&
			    !(c == '\r' && i + 1 < n && s[i + 1] == '\n') &&
			    !(c == '\n' && i > 0 && s[i - 1] == '\r')))
				clean = false;
		}
	if (clean && maxline <= FOLD_AT && !trailing_ws &&
	    (delim == NULL || memmem(s, n, delim, strlen(delim)) == NULL))
		return CTE_7BIT;
	if (esc * 3 > n)
		return CTE_B64;
	return CTE_QP;
}

const char *
mime_pick_encoding(const char *body, size_t len)
{
	buf_t t = BUF_INIT;
	normalize_body(body, len, &t);
	enum cte e = pick(t.p, t.len, NULL);
	buf_free(&t);
	return cte_names[e];
}

/*
 * Quoted-printable (RFC 2045 6.7): lines <= 76 with soft breaks, '=' and
 * controls and 8-bit encoded, whitespace before a line end encoded, a '.'
 * or "From " at the start of an output line encoded so that neither dot
 * handling nor mbox munging can touch it.
 */
/*
 * Quoted-printable (RFC 2045 6.7), line by line over CRLF-normalised text:
 * lines <= 76 with soft breaks, '=' and controls and 8-bit encoded,
 * whitespace before a line end encoded, a '.' or "From " at the start of an
 * output line encoded so that neither dot handling nor mbox munging can
 * touch it. Writes straight into reserved storage.
 */
static void
qp_encode(const char *s, size_t n, buf_t *o)
{
	size_t i = 0;

	/* worst case: every octet =XX plus a soft break per 25 of them */
	buf_reserve(o, 3 * n + 3 * (n / 25 + 1) + 8);
	char *w = o->p + o->len;
	while (i < n) {
		const char *cr = memchr(s + i, '\r', n - i);
		while (cr != NULL && !((size_t)(cr - s) + 1 < n && cr[1] == '\n'))
			cr = memchr(cr + 1, '\r', n - (size_t)(cr + 1 - s));
		size_t e = cr ? (size_t)(cr - s) : n, col = 0;
		for (; i < e; i++) {
			unsigned char c = (unsigned char)s[i];
			bool last = i + 1 == e;
			bool enc = !qp_lit[c] || (last && (c == ' ' || c == '\t'));
			size_t tl = enc ? 3 : 1;
			/* room for the soft-break '=' unless this ends the line */
			if (col + tl > (last ? QP_LINE : QP_LINE - 1)) {
				*w++ = '=';
				*w++ = '\r';
				*w++ = '\n';
				col = 0;
			}
			if (col == 0 && (c == '.' || (c == 'F' && n - i >= 5 &&
			    memcmp(s + i, "From ", 5) == 0))) {
				enc = true;
				tl = 3;
			}
			if (enc) {
				*w++ = '=';
				*w++ = hexdig[c >> 4];
				*w++ = hexdig[c & 15];
			} else {
				*w++ = (char)c;
			}
			col += tl;
		}
		if (cr != NULL) {
			*w++ = '\r';
			*w++ = '\n';
			i = e + 2;
		} else if (col > 0) {
			*w++ = '=';	/* no final line break: soft one */
			*w++ = '\r';
			*w++ = '\n';
		}
	}
	o->len = (size_t)(w - o->p);
	buf_cstr(o);
}

static void
b64_body(const char *s, size_t n, buf_t *o)
{
	buf_reserve(o, n / 57 * 78 + 80);
	for (size_t i = 0; i < n; i += 57) {
		size_t k = n - i < 57 ? n - i : 57;
		b64_emit(o, (const unsigned char *)s + i, k);
		buf_add(o, "\r\n", 2);
	}
}

static void
emit_part_headers(buf_t *o, const char *type, enum cte e)
{
	buf_printf(o, "Content-Type: %s; charset=utf-8\r\n"
	    "Content-Transfer-Encoding: %s\r\n", type, cte_names[e]);
}

static void
emit_body(buf_t *o, const char *s, size_t n, enum cte e)
{
	switch (e) {
	case CTE_7BIT:
		buf_add(o, s, n);
		break;
	case CTE_QP:
		qp_encode(s, n, o);
		break;
	case CTE_B64:
		b64_body(s, n, o);
		break;
	}
}

static uint64_t
mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* ---- the message ---- */

static const char *const reserved[] = {
	"from", "to", "cc", "bcc", "reply-to", "sender", "subject", "date",
	"message-id", "mime-version", "content-type",
	"content-transfer-encoding", "list-unsubscribe",
	"list-unsubscribe-post", "feedback-id", "dkim-signature",
	"return-path", "received", "resent-from", "resent-to",
};

static bool
header_name_ok(const char *n)
{
	size_t len;

	if (n == NULL || (len = strlen(n)) == 0 || len > 76)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)n[i];
		if (c < 33 || c > 126 || c == ':')
			return false;
	}
	for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
		if (strcasecmp(n, reserved[i]) == 0)
			return false;
	return true;
}

/* ASCII structured value (List-Unsubscribe, Feedback-ID): fold at spaces. */
static int
hw_structured(hw *w, const char *hname, const char *v, buf_t *scratch,
    char *err, size_t errlen)
{
	if (!sanitize(v, scratch, 4096)) {
		seterr(err, errlen, "mime: %s: value longer than 4096 bytes", hname);
		return -1;
	}
	if (!is_ascii(scratch->p, scratch->len)) {
		seterr(err, errlen, "mime: %s: value must be ASCII", hname);
		return -1;
	}
	if (longest_word(scratch->p, scratch->len) > 900) {
		seterr(err, errlen, "mime: %s: a word longer than 900 bytes "
		    "cannot be folded", hname);
		return -1;
	}
	if (scratch->len == 0)
		return 0;
	hw_start(w, hname);
	hw_words(w, scratch->p, scratch->len);
	hw_end(w);
	return 0;
}

static bool
msgid_ok(const char *id)
{
	size_t n;

	if (id == NULL || (n = strlen(id)) < 3 || n > 250 ||
	    strchr(id, '@') == NULL)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)id[i];
		if (c <= 0x20 || c >= 0x7f || c == '<' || c == '>' ||
		    c == '"' || c == '\\' || c == ',' || c == ';')
			return false;
	}
	return true;
}

int
mime_build(const mime_msg *m, buf_t *out, char *err, size_t errlen)
{
	static const char *const wday[] =
	    { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May",
	    "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	size_t start = out->len;
	buf_t sc = BUF_INIT, text = BUF_INIT, html = BUF_INIT;
	hw w = { out, 0 };
	struct tm tm;
	char bnd[48];

	if (!addr_ok(m->from_addr)) {
		seterr(err, errlen, "mime: from address is not local@domain");
		goto fail;
	}
	if (!addr_ok(m->to_addr)) {
		seterr(err, errlen, "mime: to address is not local@domain");
		goto fail;
	}
	if (m->reply_to_addr != NULL && !addr_ok(m->reply_to_addr)) {
		seterr(err, errlen, "mime: reply-to address is not local@domain");
		goto fail;
	}
	if (!msgid_ok(m->message_id)) {
		seterr(err, errlen, "mime: message-id must be printable ASCII "
		    "with '@' and no spaces or <>");
		goto fail;
	}
	if (m->text_len > MIME_MAX_BODY || m->html_len > MIME_MAX_BODY) {
		seterr(err, errlen, "mime: body larger than %u bytes",
		    MIME_MAX_BODY);
		goto fail;
	}
	for (size_t i = 0; i < m->n_extra; i++) {
		if (!header_name_ok(m->extra[i].name)) {
			seterr(err, errlen, "mime: extra header %zu: bad or "
			    "reserved name", i);
			goto fail;
		}
	}

	if (gmtime_r(&m->date, &tm) == NULL) {
		seterr(err, errlen, "mime: date out of range");
		goto fail;
	}
	buf_printf(out, "Date: %s, %d %s %d %02d:%02d:%02d +0000\r\n",
	    wday[tm.tm_wday], tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900,
	    tm.tm_hour, tm.tm_min, tm.tm_sec);
	hw_address(&w, "From", m->from_name, m->from_addr, &sc);
	hw_address(&w, "To", m->to_name, m->to_addr, &sc);
	if (m->reply_to_addr != NULL)
		hw_address(&w, "Reply-To", m->reply_to_name, m->reply_to_addr, &sc);
	if (!sanitize(m->subject, &sc, MIME_MAX_HEADER)) {
		seterr(err, errlen, "mime: subject longer than %u bytes",
		    MIME_MAX_HEADER);
		goto fail;
	}
	hw_start(&w, "Subject");
	hw_unstructured(&w, sc.p ? sc.p : "", sc.len);
	hw_end(&w);
	buf_printf(out, "Message-ID: <%s>\r\n", m->message_id);
	buf_adds(out, "MIME-Version: 1.0\r\n");
	if (m->list_unsubscribe != NULL && hw_structured(&w,
	    "List-Unsubscribe", m->list_unsubscribe, &sc, err, errlen) < 0)
		goto fail;
	if (m->list_unsubscribe_post != NULL && hw_structured(&w,
	    "List-Unsubscribe-Post", m->list_unsubscribe_post, &sc, err,
	    errlen) < 0)
		goto fail;
	if (m->feedback_id != NULL && hw_structured(&w, "Feedback-ID",
	    m->feedback_id, &sc, err, errlen) < 0)
		goto fail;
	for (size_t i = 0; i < m->n_extra; i++) {
		if (!sanitize(m->extra[i].value, &sc, MIME_MAX_HEADER)) {
			seterr(err, errlen, "mime: header %s: value longer "
			    "than %u bytes", m->extra[i].name, MIME_MAX_HEADER);
			goto fail;
		}
		hw_start(&w, m->extra[i].name);
		hw_unstructured(&w, sc.p ? sc.p : "", sc.len);
		hw_end(&w);
	}

	uint64_t h1 = mix64(m->boundary_seed), h2 = mix64(h1 ^ 0x636172746569ULL);
	snprintf(bnd, sizeof bnd, "=_ct_%016llx%016llx",
	    (unsigned long long)h1, (unsigned long long)h2);
	char delim[sizeof bnd + 2];
	snprintf(delim, sizeof delim, "--%s", bnd);

	if (m->text != NULL)
		normalize_body(m->text, m->text_len, &text);
	if (m->html != NULL)
		normalize_body(m->html, m->html_len, &html);

	if (text.len > 0 && html.len > 0) {
		enum cte et = pick(text.p, text.len, delim);
		enum cte eh = pick(html.p, html.len, delim);
		buf_printf(out, "Content-Type: multipart/alternative;\r\n"
		    " boundary=\"%s\"\r\n\r\n"
		    "This is a multi-part message in MIME format.\r\n", bnd);
		buf_printf(out, "\r\n%s\r\n", delim);
		emit_part_headers(out, "text/plain", et);
		buf_add(out, "\r\n", 2);
		emit_body(out, text.p, text.len, et);
		buf_printf(out, "\r\n%s\r\n", delim);
		emit_part_headers(out, "text/html", eh);
		buf_add(out, "\r\n", 2);
		emit_body(out, html.p, html.len, eh);
		buf_printf(out, "\r\n%s--\r\n", delim);
	} else {
		buf_t *b = html.len > 0 ? &html : &text;
		enum cte e = b->len > 0 ? pick(b->p, b->len, NULL) : CTE_7BIT;
		emit_part_headers(out, html.len > 0 ? "text/html" : "text/plain", e);
		buf_add(out, "\r\n", 2);
		if (b->len > 0)
			emit_body(out, b->p, b->len, e);
	}
	buf_free(&sc);
	buf_free(&text);
	buf_free(&html);
	return 0;
fail:
	buf_truncate(out, start);
	buf_free(&sc);
	buf_free(&text);
	buf_free(&html);
	return -1;
}

void
mime_dot_stuff(const char *in, size_t len, buf_t *out)
{
	size_t i = 0;

	buf_reserve(out, len + len / 32 + 4);
	/* each turn starts at the beginning of a line; clean CRLF lines are
	 * copied whole */
	while (i < len) {
		if (in[i] == '.')
			buf_addc(out, '.');
		const char *nl = memchr(in + i, '\n', len - i);
		size_t end = nl ? (size_t)(nl - in) : len;
		const char *cr = memchr(in + i, '\r', end - i);
		if (cr == NULL) {		/* bare LF, or no line end */
			buf_add(out, in + i, end - i);
			buf_add(out, "\r\n", 2);
			i = nl ? end + 1 : len;
		} else if (nl != NULL && cr == nl - 1) {	/* CRLF */
			buf_add(out, in + i, end + 1 - i);
			i = end + 1;
		} else {			/* bare CR ends the line */
			size_t c = (size_t)(cr - in);
			buf_add(out, in + i, c - i);
			buf_add(out, "\r\n", 2);
			i = c + 1;
		}
	}
	if (len == 0)
		buf_add(out, "\r\n", 2);
}
