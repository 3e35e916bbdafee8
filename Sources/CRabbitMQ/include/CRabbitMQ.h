#ifndef HERALD_CRABBITMQ_H
#define HERALD_CRABBITMQ_H

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>

/// `amqp_login` is variadic and so cannot be called from Swift: this fixes
/// its arguments to the PLAIN mechanism with a username and a password.
amqp_rpc_reply_t herald_amqp_login_plain(amqp_connection_state_t state,
                                         const char *vhost,
                                         int channel_max,
                                         int frame_max,
                                         int heartbeat,
                                         const char *user,
                                         const char *password);

#endif
