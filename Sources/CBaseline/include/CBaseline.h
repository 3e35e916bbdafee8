#ifndef HERALD_CBASELINE_H
#define HERALD_CBASELINE_H
#include <stdint.h>
/// Consumes `count` messages from `queue` with basic.qos `prefetch` and acks each
/// one: the plain C loop over rabbitmq-c that the Swift client is compared with.
/// Returns 0 and the elapsed seconds, or a negative number on failure (with a message in `error`).
int herald_baseline_consume_ack(const char *host, int port, const char *vhost,
                                const char *user, const char *password,
                                const char *queue, int prefetch, long count,
                                double *seconds, char *error, int error_len);
#endif
