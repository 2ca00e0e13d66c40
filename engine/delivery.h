/*
 * delivery — the scheduler and the delivery loop (prefix dl_), on the
 * libev loop thread.
 *
 * Pull: per campaign (transactional before bulk, bulk round-robin) the
 * due index is read from a cursor, at most `max_active` messages are held
 * in memory; a message being delivered stays in the index and in the
 * in-flight set until its outcome is committed (engine/commit), so a crash
 * at any moment leaves it due and it is sent again on restart.
 *
 * Route: each message's domain is resolved once (engine/dns: MX, cached
 * for its TTL; or a static `[route]`), and the domain joins a *site*: the
 * set of its MX hosts (domains with the same MX set share a site), or the
 * `[site NAME]` whose mx patterns match, or the route's next hop. Sites
 * own connections (engine/smtp sessions) up to their limits; a session asks
 * its site for the next message of any of the site's domains.
 *
 * Outcomes: delivered; deferred (4xx, timeouts, dropped connections, DNS
 * temporary failure) → next retry by `[retry] schedule` with jitter, or
 * `expired` past max_age; bounced (5xx, NXDOMAIN, null MX) → hard bounces of
 * a mailbox add the address to the suppression list.
 */
#ifndef CARTEIRO_DELIVERY_H
#define CARTEIRO_DELIVERY_H

#include <ev.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "conf/conf.h"
#include "engine/commit.h"
#include "engine/render.h"
#include "queue/queue.h"

typedef struct dl dl;

dl *dl_new(struct ev_loop *loop, const struct cf *cf, q_env *q, cm *c,
	evlog *ev, const struct rd_env *env, char *err, size_t errlen);
void dl_free(dl *d);

void dl_campaign(dl *d, struct camp *c, bool paused);
void dl_pause(dl *d, uint32_t cid, bool paused);
void dl_forget(dl *d, uint32_t cid);
/* New or re-keyed due entries for cid (0 = all campaigns). */
void dl_kick(dl *d, uint32_t cid);
/* A committed batch came back from the committer (takes ownership). */
void dl_committed(dl *d, struct cm_outcome *list);
/* Stop pulling; close sessions politely; `idle` tells when nothing is in
 * flight any more. */
void dl_drain(dl *d);
bool dl_idle(const dl *d);
/* {"inflight","connections","sites":[...]} */
json_t *dl_status(dl *d, bool sites);
/* Bounce categories as stored in a message record (4 bits). */
int dl_category_code(const char *name);
const char *dl_category_name(int code);
/* Apply new limits (config reload). */
void dl_reconfigure(dl *d, const struct cf *cf);

#endif
