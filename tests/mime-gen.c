/*
 * mime-gen — write a test campaign of messages for the independent checkers.
 *
 *   mime-gen OUTDIR [SELECTOR=KEYFILE ...]
 *
 * Builds a fixed set of messages with templates/mime (accents, emoji, long
 * lines, empty parts, odd whitespace, lone dots, hostile fields), signs each
 * with every given key (d=loja.example) using templates/dkim, and writes
 * OUTDIR/NN.eml (signature headers + message, CRLF) and OUTDIR/manifest.json
 * holding the inputs as given, for tests/integration/mime_check.py.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "templates/dkim.h"
#include "templates/mime.h"

#define MAXSIG 8

struct tcase {
	const char *subject, *from_name, *to_name, *text, *html;
	size_t text_len, html_len;   /* 0 = strlen */
};

static char *
repeat(const char *piece, size_t total)
{
	size_t pl = strlen(piece), n = 0;
	char *s = malloc(total + pl + 1);
	if (s == NULL)
		abort();
	while (n < total) {
		memcpy(s + n, piece, pl);
		n += pl;
	}
	s[n] = '\0';
	return s;
}

/* Seeded random UTF-8 strings from hostile pieces, for extra cases. */
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static unsigned
rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)rng;
}

static char *
rnd_str(size_t max)
{
	static const char *const pieces[] = { "\r\n", "\n", "\r", ".", "\r\n.\r\n",
	    "Bcc: x@y", "=?utf-8?q?x?=", "ç", "ã", "É", "🎉", "日本", " ", "\t",
	    "  ", "\"", "\\", ",", "<", ">", "From ", "=", "(", ")", ";", ":",
	    "@", "a", "Z", "9", "_", "?", "\x01", "\x7f", "João", "Conceição" };
	size_t n = rnd() % max, k = 0;
	char *s = malloc(n * 16 + 1);
	if (s == NULL)
		abort();
	for (size_t i = 0; i < n; i++) {
		const char *p = pieces[rnd() % (sizeof pieces / sizeof pieces[0])];
		memcpy(s + k, p, strlen(p));
		k += strlen(p);
	}
	s[k] = '\0';
	return s;
}

#define NRANDOM 40

int
main(int argc, char **argv)
{
	dkim_signer *signers[MAXSIG];
	size_t ns = 0;
	char err[512], path[4096];
	int rc = 1;

	if (argc < 2) {
		fprintf(stderr, "usage: mime-gen OUTDIR [SELECTOR=KEYFILE ...]\n");
		return 2;
	}
	for (int i = 2; i < argc && ns < MAXSIG; i++) {
		char *eq = strchr(argv[i], '=');
		if (eq == NULL) {
			fprintf(stderr, "mime-gen: %s: want SELECTOR=KEYFILE\n", argv[i]);
			return 2;
		}
		*eq = '\0';
		signers[ns] = dkim_signer_new("loja.example", argv[i], eq + 1,
		    err, sizeof err);
		if (signers[ns] == NULL) {
			fprintf(stderr, "mime-gen: %s\n", err);
			return 1;
		}
		ns++;
	}

	char *long_ascii = repeat("abcdefghij", 2000);
	char *long_acc = repeat("ação çã ", 5000);
	char *huge_subj = repeat("x", 100 * 1024);
	char *huge_acc = repeat("é", 50 * 1024);
	static const char nul_body[] = "antes\0depois\n";
	const struct tcase cases[] = {
		{ "Ação de Graças 🎉", "Conceição", "João",
		  "Olá João,\n\nSua promoção de Ação de Graças chegou! 🎉\n",
		  "<p>Olá <b>João</b>, promoção 🎉</p>\n", 0, 0 },
		{ "João", "Loja São Paulo", "Conceição",
		  "Preço: R$ 1.234,56\n", NULL, 0, 0 },
		{ "Conceição", "Silva, João", "Silva, Joao",
		  NULL, "<html><body>só html</body></html>", 0, 0 },
		{ "Empty parts", "Loja", "Maria", "", "", 0, 0 },
		{ "Long lines", "Loja", "Maria", long_ascii, long_acc, 0, 0 },
		{ "Whitespace", "Loja\t  Tabs", "  Maria   Clara ",
		  "a  b\t\tc   \n  \t\nend with spaces   \n\n\n\n",
		  "<p>\t x  </p>   \n\t\n", 0, 0 },
		{ "Dots", "Loja", "Maria",
		  ".\n..\n.x\nline\n.\n", "<p>\n.\n</p>\n.", 0, 0 },
		{ "  odd \t\t whitespace   in   subject  ", "  A \t B ", "C\t\tD",
		  "text\n", NULL, 0, 0 },
		{ "Hi\r\nBcc: victim@example.com", "Evil\r\nX-Injected: 1",
		  "Mal\nicioso", "x\r\n.\r\nMAIL FROM:<a@b>\r\n", "y\r.\rz", 0, 0 },
		{ "=?utf-8?q?not_an_encoded_word?=", "Joe \"JJ\" Back\\slash",
		  "Dr. Who", "bare\rcr and\nbare lf\r\n", NULL, 0, 0 },
		{ "日本語の件名です", "日本語の名前", "テスト",
		  "日本語のテキストです。\n二行目。\n", "<p>日本語</p>\n", 0, 0 },
		{ huge_subj, huge_acc, "Maria", long_acc, NULL, 0, 0 },
		{ huge_acc, "Loja", "Maria", "curto\n", NULL, 0, 0 },
		{ "NUL in body", "Loja", "Maria", nul_body, NULL,
		  sizeof nul_body - 1, 0 },
		{ "Trailing = and spaces", "Loja", "Maria",
		  "a=b \nc=\t\nçã=  \n", "<a href=\"x\">ç</a> \n", 0, 0 },
	};
	size_t nfixed = sizeof cases / sizeof cases[0];
	size_t ncases = nfixed + NRANDOM;
	struct tcase all[sizeof cases / sizeof cases[0] + NRANDOM];
	char *rstr[NRANDOM * 5];
	memcpy(all, cases, sizeof cases);
	for (size_t i = 0; i < NRANDOM; i++) {
		char **r = rstr + 5 * i;
		for (int k = 0; k < 5; k++)
			r[k] = rnd_str(k < 3 ? 40 : 300);
		all[nfixed + i] = (struct tcase){ r[0], r[1], r[2],
		    i % 7 == 3 ? NULL : r[3], i % 5 == 2 ? NULL : r[4], 0, 0 };
	}
	json_t *man = json_array();
	buf_t msg = BUF_INIT, sig = BUF_INIT;

	for (size_t i = 0; i < ncases; i++) {
		const struct tcase *c = &all[i];
		mime_msg m;
		memset(&m, 0, sizeof m);
		m.from_name = c->from_name;
		m.from_addr = "news@loja.example";
		m.to_name = c->to_name;
		m.to_addr = "cliente@example.com";
		m.reply_to_name = "Atendimento";
		m.reply_to_addr = "sac@loja.example";
		m.subject = c->subject;
		m.text = c->text;
		m.text_len = c->text ? (c->text_len ? c->text_len : strlen(c->text)) : 0;
		m.html = c->html;
		m.html_len = c->html ? (c->html_len ? c->html_len : strlen(c->html)) : 0;
		char mid[64];
		snprintf(mid, sizeof mid, "%zu.test@mta.loja.example", i);
		m.message_id = mid;
		m.date = 1763856000 + (time_t)i;
		m.list_unsubscribe = "<https://loja.example/unsub?t=AbC-123_x>, "
		    "<mailto:unsubscribe@loja.example?subject=AbC-123_x>";
		m.list_unsubscribe_post = "List-Unsubscribe=One-Click";
		m.feedback_id = "c42:loja:carteiro";
		mime_header extra[] = { { "X-Campaign-ID", "c-42" } };
		m.extra = extra;
		m.n_extra = 1;
		m.boundary_seed = i;

		buf_reset(&msg);
		buf_reset(&sig);
		if (mime_build(&m, &msg, err, sizeof err) < 0) {
			fprintf(stderr, "mime-gen: case %zu: %s\n", i, err);
			goto out;
		}
		if (dkim_sign(signers, ns, msg.p, msg.len, 1763856000, &sig,
		    err, sizeof err) < 0) {
			fprintf(stderr, "mime-gen: case %zu: %s\n", i, err);
			goto out;
		}
		snprintf(path, sizeof path, "%s/%02zu.eml", argv[1], i);
		FILE *fp = fopen(path, "wb");
		if (fp == NULL || fwrite(sig.p, 1, sig.len, fp) != sig.len ||
		    fwrite(msg.p, 1, msg.len, fp) != msg.len || fclose(fp) != 0) {
			perror(path);
			goto out;
		}
		json_t *o = json_object();
		json_object_set_new(o, "file", json_string(path));
		json_object_set_new(o, "subject", json_string(c->subject));
		json_object_set_new(o, "from_name", json_string(c->from_name));
		json_object_set_new(o, "from_addr", json_string(m.from_addr));
		json_object_set_new(o, "to_name", json_string(c->to_name));
		json_object_set_new(o, "to_addr", json_string(m.to_addr));
		json_object_set_new(o, "text", c->text ?
		    json_stringn(c->text, m.text_len) : json_null());
		json_object_set_new(o, "html", c->html ?
		    json_stringn(c->html, m.html_len) : json_null());
		json_array_append_new(man, o);
	}
	snprintf(path, sizeof path, "%s/manifest.json", argv[1]);
	if (json_dump_file(man, path, JSON_INDENT(1)) != 0) {
		fprintf(stderr, "mime-gen: cannot write %s\n", path);
		goto out;
	}
	printf("%zu messages, %zu signatures each\n", ncases, ns);
	rc = 0;
out:
	json_decref(man);
	buf_free(&msg);
	buf_free(&sig);
	for (size_t i = 0; i < ns; i++)
		dkim_signer_free(signers[i]);
	for (size_t i = 0; i < NRANDOM * 5; i++)
		free(rstr[i]);
	free(long_ascii);
	free(long_acc);
	free(huge_subj);
	free(huge_acc);
	return rc;
}
