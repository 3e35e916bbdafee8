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

/// Arrays and objects nested deeper than this, the outermost included, are refused (by the
/// general path of the decoder too): each JSON document on its own, the envelope and the
/// notification inside its `oslo.message` string counted apart.
enum { HERALD_MAX_DEPTH = 128 };

/// What one scan found in an oslo.messaging notification (driver `messaging` or `messagingv2`).
///
/// The scan reads the whole document, including the members it only copies, and hands over
/// (status 1) whatever the decoder's general path would refuse, so that it never accepts what
/// that path refuses: invalid JSON anywhere (simdjson's On-Demand API does not look inside what
/// it skips, so nothing is skipped), a key twice in one object, data after the object, nesting
/// deeper than `HERALD_MAX_DEPTH`, a nonzero number that rounds to zero or beyond a double, an
/// envelope with only one of `oslo.version` and `oslo.message`. It also hands over, without
/// judging, any object with a key that is not ASCII: Swift compares keys by canonical equivalence
/// (U+00E9 and U+0065 U+0301 are the same key there), bytes are compared here.
typedef struct {
    /// 0: scanned; 1: not something this fast path handles (a Ceilometer event list, or an
    /// error the caller should describe by decoding the slow way).
    int status;
    herald_bytes event_type;
    herald_bytes message_id;
    /// payload.project_id, payload.tenant_id, _context_project_id, _context_tenant: the first
    /// non-empty string; length 0 when none.
    herald_bytes project;
    /// _context_project_id, else _context_tenant: the project that acted; length 0 when none.
    herald_bytes context_project;
    /// The notification as a JSON object without its `_context_*` members, its other members
    /// copied byte for byte.
    herald_bytes body;
} herald_notification;

typedef struct herald_scanner herald_scanner;

/// A scanner (simdjson's On-Demand parser and its buffers). One caller at a time.
herald_scanner *herald_scanner_create(void);
void herald_scanner_destroy(herald_scanner *scanner);

/// Zero bytes a document's buffer needs past its end for the scanner to read it in place: each
/// function below takes `capacity`, the bytes readable at `data` (at least `length`); when the
/// `HERALD_JSON_PADDING` bytes past `length` are there and zero, the document is read where it
/// is, else it is copied into the scanner's own zero-padded buffer first (the same bytes either
/// way, so the same answers).
#define HERALD_JSON_PADDING 64

/// 1 when the document at `data` would be read in place (see `HERALD_JSON_PADDING`), else 0.
int herald_reads_in_place(const uint8_t *data, size_t length, size_t capacity);

/// Scans `length` bytes at `data`; fills `out`; returns `out->status`.
int herald_scan(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, herald_notification *out);

enum {
    HERALD_JSON_MISSING = 0,
    HERALD_JSON_NULL = 1,
    HERALD_JSON_BOOL = 2,      /* number: 0 or 1 */
    HERALD_JSON_NUMBER = 3,    /* number */
    HERALD_JSON_STRING = 4,    /* text: the string, unescaped */
    HERALD_JSON_COMPOSITE = 5, /* text: the object or array as JSON */
};

/// One value found by `herald_lookup`.
typedef struct {
    int kind;
    double number;
    herald_bytes text;
} herald_json_value;

/// The value at `pointer` (an RFC 6901 JSON pointer) as its JSON text, byte for byte as it
/// stands in the document (a string with its quotes and escapes); valid until the scanner's
/// next use. 0 when found.
int herald_lookup_raw(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, const char *pointer,
                      size_t pointer_length, herald_bytes *out);

/// The value at `pointer` (RFC 6901, e.g. `/payload/state`) in the JSON document at `data`;
/// returns 0 when found, 1 when not (or not JSON).
int herald_lookup(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, const char *pointer,
                  size_t pointer_length, herald_json_value *out);

/// The first of `count` pointers (RFC 6901; `pointers` holds them one after the other,
/// `pointer_lengths[i]` bytes each) whose value is a string of 1 to `max_bytes` bytes,
/// unescaped: one pass of simdjson's stage 1 for all of them (each pointer is walked from
/// the document's start). Returns 0 and sets `found` (its position) and `out` (valid until the
/// scanner's next use) when one is; 1 when none is, or not JSON.
int herald_lookup_first_string(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, const char *pointers,
                               const size_t *pointer_lengths, size_t count, size_t max_bytes, size_t *found,
                               herald_bytes *out);

#ifdef __cplusplus
}
#endif

#endif
