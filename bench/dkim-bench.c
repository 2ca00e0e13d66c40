/*
 * dkim-bench — DKIM signing throughput on one core versus OpenSSL's ceiling.
 *
 *   dkim-bench [SECONDS] [--no-openssl-speed]
 *
 * Generates an RSA-2048 and an Ed25519 key (temp dir, removed after), builds
 * a ~10 KB message with templates/mime (text + html, quoted-printable) and
 * calls dkim_sign() in a loop for SECONDS (default 3) per algorithm on one
 * thread. Prints signs/s and the ratio to two ceilings measured in the same
 * run: (a) raw EVP signing of a 32-octet digest with the same key in this
 * process (what `openssl speed` measures), (b) `openssl speed -seconds N
 * rsa2048 ed25519` itself, parsed from its output (skipped if unavailable).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "templates/dkim.h"
#include "templates/mime.h"

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
write_key(const char *path, EVP_PKEY *k)
{
	FILE *fp = fopen(path, "w");
	if (fp == NULL || !PEM_write_PrivateKey(fp, k, NULL, NULL, 0, NULL, NULL)) {
		perror(path);
		exit(1);
	}
	fclose(fp);
}

static double
bench_dkim(dkim_signer *s, const buf_t *msg, double secs)
{
	buf_t out = BUF_INIT;
	char err[256];
	long n = 0;
	double t0 = now(), t;
	do {
		for (int i = 0; i < 8; i++) {
			buf_reset(&out);
			if (dkim_sign(&s, 1, msg->p, msg->len, 1763856000, &out,
			    err, sizeof err) != 0) {
				fprintf(stderr, "dkim_sign: %s\n", err);
				exit(1);
			}
			n++;
		}
		t = now() - t0;
	} while (t < secs);
	buf_free(&out);
	return (double)n / t;
}

/* What openssl speed does: sign a 32-octet digest, context set up once. */
static double
bench_raw(EVP_PKEY *k, int rsa, double secs)
{
	unsigned char md[32] = { 1, 2, 3 }, sig[1024];
	long n = 0;
	double t0 = now(), t;
	EVP_PKEY_CTX *pc = NULL;
	EVP_MD_CTX *mc = NULL;

	if (rsa) {
		pc = EVP_PKEY_CTX_new(k, NULL);
		EVP_PKEY_sign_init(pc);
		EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING);
		EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256());
	} else {
		mc = EVP_MD_CTX_new();
		EVP_DigestSignInit(mc, NULL, NULL, NULL, k);
	}
	do {
		for (int i = 0; i < 8; i++) {
			size_t sl = sizeof sig;
			int ok = rsa ? EVP_PKEY_sign(pc, sig, &sl, md, sizeof md) :
			    EVP_DigestSign(mc, sig, &sl, md, sizeof md);
			if (ok != 1) {
				fprintf(stderr, "raw sign failed\n");
				exit(1);
			}
			n++;
		}
		t = now() - t0;
	} while (t < secs);
	EVP_PKEY_CTX_free(pc);
	EVP_MD_CTX_free(mc);
	return (double)n / t;
}

/* Parse `openssl speed` sign/s for rsa2048 and ed25519. */
static void
openssl_speed(int secs, double *rsa, double *ed)
{
	char cmd[128], line[512];
	snprintf(cmd, sizeof cmd, "openssl speed -seconds %d rsa2048 ed25519 2>/dev/null", secs);
	FILE *p = popen(cmd, "r");
	*rsa = *ed = 0;
	if (p == NULL)
		return;
	while (fgets(line, sizeof line, p)) {
		double a, b, c, d;
		if (sscanf(line, "rsa 2048 bits %lfs %lfs %lf %lf", &a, &b, &c, &d) == 4)
			*rsa = c;
		else if (strstr(line, "(Ed25519)") &&
		    sscanf(strstr(line, "(Ed25519)") + 9, " %lfs %lfs %lf %lf",
		    &a, &b, &c, &d) == 4)
			*ed = c;
	}
	pclose(p);
}

int
main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 3.0;
	int run_speed = !(argc > 2 && strcmp(argv[2], "--no-openssl-speed") == 0);
	char dir[] = "/tmp/dkim-bench-XXXXXX", rp[64], ep[64], err[256];

	if (secs <= 0)
		secs = 3.0;
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(rp, sizeof rp, "%s/rsa.pem", dir);
	snprintf(ep, sizeof ep, "%s/ed.pem", dir);
	EVP_PKEY *rk = EVP_RSA_gen(2048), *ek = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	write_key(rp, rk);
	write_key(ep, ek);
	dkim_signer *rs = dkim_signer_new("loja.example", "rsa", rp, err, sizeof err);
	dkim_signer *es = dkim_signer_new("loja.example", "ed", ep, err, sizeof err);
	unlink(rp);
	unlink(ep);
	rmdir(dir);
	if (rs == NULL || es == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}

	buf_t text = BUF_INIT, html = BUF_INIT, msg = BUF_INIT;
	while (text.len < 3300)
		buf_adds(&text, "Olá Maria, a promoção de Ação de Graças chegou: "
		    "até 50% de desconto em eletrônicos, só até domingo.\n");
	while (html.len < 3800)
		buf_adds(&html, "<p>Olá <b>Maria</b>, a promoção de Ação de Graças "
		    "chegou: até 50% de desconto.</p>\n");
	mime_msg m = { .from_name = "Loja Exemplo", .from_addr = "news@loja.example",
	    .to_name = "Maria Conceição", .to_addr = "maria@example.com",
	    .subject = "Ação de Graças 🎉 até 50% off", .text = text.p,
	    .text_len = text.len, .html = html.p, .html_len = html.len,
	    .message_id = "1.bench@mta.loja.example", .date = 1763856000,
	    .list_unsubscribe = "<https://loja.example/u?t=AAAA>",
	    .list_unsubscribe_post = "List-Unsubscribe=One-Click",
	    .feedback_id = "c1:loja:carteiro", .boundary_seed = 1 };
	if (mime_build(&m, &msg, err, sizeof err) != 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}

	double srsa = 0, sed = 0;
	if (run_speed)
		openssl_speed((int)(secs + 0.5) ? (int)(secs + 0.5) : 1, &srsa, &sed);
	double drsa = bench_dkim(rs, &msg, secs), rrsa = bench_raw(rk, 1, secs);
	double ded = bench_dkim(es, &msg, secs), red = bench_raw(ek, 0, secs);

	printf("message: %zu octets; %.1f s per measurement, one thread\n", msg.len, secs);
	printf("%-10s %12s %14s %7s %16s %7s\n", "algorithm", "dkim sign/s",
	    "raw EVP sign/s", "ratio", "openssl speed/s", "ratio");
	printf("%-10s %12.0f %14.0f %6.1f%% %16.0f", "rsa2048", drsa, rrsa,
	    100 * drsa / rrsa, srsa);
	if (srsa > 0)
		printf(" %6.1f%%", 100 * drsa / srsa);
	printf("\n%-10s %12.0f %14.0f %6.1f%% %16.0f", "ed25519", ded, red,
	    100 * ded / red, sed);
	if (sed > 0)
		printf(" %6.1f%%", 100 * ded / sed);
	printf("\n");

	buf_free(&text);
	buf_free(&html);
	buf_free(&msg);
	dkim_signer_free(rs);
	dkim_signer_free(es);
	EVP_PKEY_free(rk);
	EVP_PKEY_free(ek);
	return 0;
}
