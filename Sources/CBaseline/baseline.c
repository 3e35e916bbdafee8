#include "CBaseline.h"
#include "CRabbitMQ.h"
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(char *error, int error_len, const char *what, amqp_rpc_reply_t reply) {
    snprintf(error, (size_t)error_len, "%s failed (reply type %d, library error %d: %s)",
             what, (int)reply.reply_type, reply.library_error, amqp_error_string2(reply.library_error));
    return -1;
}

/// A logged-in connection, or NULL with the reason in `error`.
static amqp_connection_state_t open_connection(const char *host, int port, const char *vhost,
                                               const char *user, const char *password,
                                               char *error, int error_len) {
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (socket == NULL || amqp_socket_open(socket, host, port) != AMQP_STATUS_OK) {
        snprintf(error, (size_t)error_len, "cannot open a socket to %s:%d", host, port);
        amqp_destroy_connection(conn);
        return NULL;
    }
    amqp_rpc_reply_t reply = herald_amqp_login_plain(conn, vhost, 0, 131072, 0, user, password);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_destroy_connection(conn);
        fail(error, error_len, "login", reply);
        return NULL;
    }
    return conn;
}

int herald_baseline_consume_ack(const char *host, int port, const char *vhost,
                                const char *user, const char *password,
                                const char *queue, int prefetch, long count,
                                double *seconds, char *error, int error_len) {
    amqp_connection_state_t conn = open_connection(host, port, vhost, user, password, error, error_len);
    if (conn == NULL) return -1;
    amqp_channel_open(conn, 1);
    amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
    amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_destroy_connection(conn);
        return fail(error, error_len, "basic.consume", reply);
    }
    double start = now_seconds();
    long received = 0;
    while (received < count) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(conn);
        reply = amqp_consume_message(conn, &envelope, NULL, 0);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            amqp_destroy_connection(conn);
            return fail(error, error_len, "consume", reply);
        }
        amqp_basic_ack(conn, envelope.channel, envelope.delivery_tag, 0);
        amqp_destroy_envelope(&envelope);
        received++;
    }
    *seconds = now_seconds() - start;
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    return 0;
}

int herald_baseline_topology(const char *host, int port, const char *vhost,
                             const char *user, const char *password,
                             const char *ingest, const char *exchange, int partitions,
                             int prefetch, long count, double *seconds,
                             char *error, int error_len) {
    if (partitions < 1 || partitions > 4096) {
        snprintf(error, (size_t)error_len, "partitions %d: expected 1 to 4096", partitions);
        return -1;
    }
    amqp_connection_state_t conn = open_connection(host, port, vhost, user, password, error, error_len);
    if (conn == NULL) return -1;
    amqp_rpc_reply_t reply;
    // Channel 1 consumes the ingest queue, channel 2 publishes with confirms, channel 3
    // consumes every partition queue: the broker work of Herald's topology, no Herald logic.
    for (amqp_channel_t channel = 1; channel <= 3; channel++) {
        amqp_channel_open(conn, channel);
        reply = amqp_get_rpc_reply(conn);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            amqp_destroy_connection(conn);
            return fail(error, error_len, "channel.open", reply);
        }
    }
    amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
    amqp_basic_qos(conn, 3, 0, (uint16_t)prefetch, 0);
    amqp_confirm_select(conn, 2);
    reply = amqp_get_rpc_reply(conn);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_destroy_connection(conn);
        return fail(error, error_len, "confirm.select", reply);
    }
    char keys[4096][8];
    char queue[256];
    for (int partition = 0; partition < partitions; partition++) {
        snprintf(keys[partition], sizeof keys[partition], "%d", partition);
        snprintf(queue, sizeof queue, "%s.p.%d", exchange, partition);
        amqp_basic_consume(conn, 3, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
        reply = amqp_get_rpc_reply(conn);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            amqp_destroy_connection(conn);
            return fail(error, error_len, "basic.consume of a partition queue", reply);
        }
    }
    amqp_basic_consume(conn, 1, amqp_cstring_bytes(ingest), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    reply = amqp_get_rpc_reply(conn);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_destroy_connection(conn);
        return fail(error, error_len, "basic.consume of the ingest queue", reply);
    }
    amqp_basic_properties_t properties;
    properties._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    properties.content_type = amqp_cstring_bytes("application/json");
    properties.delivery_mode = 2;
    double start = now_seconds();
    long routed = 0, done = 0;
    while (done < count) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(conn);
        reply = amqp_consume_message(conn, &envelope, NULL, 0);
        if (reply.reply_type == AMQP_RESPONSE_NORMAL) {
            if (envelope.channel == 1) {
                // Round robin over the partitions; the publish sequence number equals the
                // ingest delivery tag, so a confirm acks the ingest deliveries it covers.
                amqp_basic_publish(conn, 2, amqp_cstring_bytes(exchange), amqp_cstring_bytes(keys[routed % partitions]),
                                   0, 0, &properties, envelope.message.body);
                routed++;
            } else {
                amqp_basic_ack(conn, envelope.channel, envelope.delivery_tag, 0);
                done++;
            }
            amqp_destroy_envelope(&envelope);
        } else if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            amqp_frame_t frame;
            if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) {
                amqp_destroy_connection(conn);
                snprintf(error, (size_t)error_len, "reading a frame failed");
                return -1;
            }
            if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
                amqp_basic_ack_t *confirm = (amqp_basic_ack_t *)frame.payload.method.decoded;
                amqp_basic_ack(conn, 1, confirm->delivery_tag, confirm->multiple);
            } else if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
                amqp_destroy_connection(conn);
                snprintf(error, (size_t)error_len, "the broker refused a publish (basic.nack)");
                return -1;
            } else if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
                amqp_destroy_connection(conn);
                snprintf(error, (size_t)error_len, "the broker closed channel %d", frame.channel);
                return -1;
            }
        } else {
            amqp_destroy_connection(conn);
            return fail(error, error_len, "consume", reply);
        }
    }
    *seconds = now_seconds() - start;
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    return 0;
}

#ifdef __GLIBC__
#include <malloc.h>
#include <unistd.h>

size_t herald_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

size_t herald_heap_trim_and_resident(void) {
    malloc_trim(0);
    long pages = 0, resident = 0;
    FILE *statm = fopen("/proc/self/statm", "r");
    if (statm == NULL) return 0;
    if (fscanf(statm, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(statm);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}
#else
size_t herald_heap_in_use(void) { return 0; }
size_t herald_heap_trim_and_resident(void) { return 0; }
#endif
