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

int herald_baseline_consume_ack(const char *host, int port, const char *vhost,
                                const char *user, const char *password,
                                const char *queue, int prefetch, long count,
                                double *seconds, char *error, int error_len) {
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (socket == NULL || amqp_socket_open(socket, host, port) != AMQP_STATUS_OK) {
        snprintf(error, (size_t)error_len, "cannot open a socket to %s:%d", host, port);
        amqp_destroy_connection(conn);
        return -1;
    }
    amqp_rpc_reply_t reply = herald_amqp_login_plain(conn, vhost, 0, 131072, 0, user, password);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        amqp_destroy_connection(conn);
        return fail(error, error_len, "login", reply);
    }
    amqp_channel_open(conn, 1);
    amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
    amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    reply = amqp_get_rpc_reply(conn);
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
