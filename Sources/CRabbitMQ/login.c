#include "CRabbitMQ.h"

#include <string.h>

amqp_rpc_reply_t herald_amqp_login_plain(amqp_connection_state_t state,
                                         const char *vhost,
                                         int channel_max,
                                         int frame_max,
                                         int heartbeat,
                                         const char *user,
                                         const char *password) {
    // Capabilities RabbitMQ only uses when the client announces them (rabbitmq-c merges these
    // into its own client properties). Without consumer_cancel_notify the broker drops a
    // consumer (its queue deleted, ...) without telling the client, which then waits forever;
    // without connection.blocked it never says that publishing is blocked.
    amqp_table_entry_t capabilities[2];
    capabilities[0].key = amqp_cstring_bytes("consumer_cancel_notify");
    capabilities[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capabilities[0].value.value.boolean = 1;
    capabilities[1].key = amqp_cstring_bytes("connection.blocked");
    capabilities[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capabilities[1].value.value.boolean = 1;
    amqp_table_entry_t entries[1];
    entries[0].key = amqp_cstring_bytes("capabilities");
    entries[0].value.kind = AMQP_FIELD_KIND_TABLE;
    entries[0].value.value.table.num_entries = 2;
    entries[0].value.value.table.entries = capabilities;
    amqp_table_t properties;
    properties.num_entries = 1;
    properties.entries = entries;
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, &properties,
                                      AMQP_SASL_METHOD_PLAIN, user, password);
}
