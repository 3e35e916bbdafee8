#ifndef HERALD_NOTIFICATION_SCAN_H
#define HERALD_NOTIFICATION_SCAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// A run of bytes inside a scanner's own buffers: valid until the scanner's next scan.
typedef struct {
    const uint8_t *data;
    size_t length;
} herald_bytes;

/// What one scan found in an oslo.messaging notification (driver `messaging` or `messagingv2`).
typedef struct {
    /// 0: scanned; 1: not something this fast path handles (a Ceilometer event list, or an
    /// error the caller should describe by decoding the slow way).
    int status;
    herald_bytes event_type;
    herald_bytes message_id;
    /// payload.project_id, payload.tenant_id, _context_project_id, _context_tenant: the first
    /// non-empty string; length 0 when none.
    herald_bytes project;
    /// The notification as a JSON object without its `_context_*` members, its other members
    /// copied byte for byte.
    herald_bytes body;
} herald_notification;

typedef struct herald_scanner herald_scanner;

/// A scanner (simdjson's On-Demand parser and its buffers). One caller at a time.
herald_scanner *herald_scanner_create(void);
void herald_scanner_destroy(herald_scanner *scanner);

/// Scans `length` bytes at `data`; fills `out`; returns `out->status`.
int herald_scan(herald_scanner *scanner, const uint8_t *data, size_t length, herald_notification *out);

#ifdef __cplusplus
}
#endif

#endif
