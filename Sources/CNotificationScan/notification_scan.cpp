// The fast path of NotificationDecoder, over simdjson's On-Demand API: finds the fields
// Herald routes and matches by, and copies the event out without re-encoding it.
#include "CNotificationScan.h"

#include <simdjson.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>
#include <string_view>

using namespace simdjson;

/// The keys of one object, for finding a key there twice. A 256-bit filter of a cheap hash of
/// each key: only a key whose bit is already set is compared with the keys before it, and after
/// 64 such comparisons in one object (a crafted object) the keys are sorted once at its end
/// instead. The views point into the document: valid until the next scan.
struct key_set {
    std::vector<std::string_view> keys;
    uint64_t filter[4] = {0, 0, 0, 0};
    int probes = 0;
    bool sort_at_end = false;

    void clear() {
        keys.clear();
        filter[0] = filter[1] = filter[2] = filter[3] = 0;
        probes = 0;
        sort_at_end = false;
    }

    /// False when `key` is there already.
    bool insert(std::string_view key) {
        size_t n = key.size();
        uint32_t hash = static_cast<uint32_t>(n);
        if (n > 0) {
            hash = hash * 31u + static_cast<unsigned char>(key[0]);
            hash = hash * 31u + static_cast<unsigned char>(key[n / 2]);
            hash = hash * 31u + static_cast<unsigned char>(key[n - 1]);
        }
        hash = (hash * 2654435761u) >> 24;
        uint64_t bit = uint64_t{1} << (hash & 63);
        uint64_t &word = filter[hash >> 6];
        if ((word & bit) != 0 && !sort_at_end) {
            if (++probes > 64) {
                sort_at_end = true;
            } else {
                for (std::string_view other : keys) {
                    if (other == key) return false;
                }
            }
        }
        word |= bit;
        keys.push_back(key);
        return true;
    }

    /// False when a key is there twice (only sorting finds it once `sort_at_end`).
    bool finish() {
        if (!sort_at_end) return true;
        std::sort(keys.begin(), keys.end());
        return std::adjacent_find(keys.begin(), keys.end()) == keys.end();
    }
};

struct herald_scanner {
    ondemand::parser parser;
    // Reused input buffers (simdjson reads up to SIMDJSON_PADDING bytes past the end).
    std::vector<char> envelope;
    std::vector<char> message;
    std::string event_type;
    std::string message_id;
    std::string project;
    std::string tenant;
    std::string context_project;
    std::string context_tenant;
    std::string body;
    // The keys of the objects being read, one set per depth (1: the outermost object).
    std::vector<key_set> keys = std::vector<key_set>(HERALD_MAX_DEPTH + 1);
};

extern "C" herald_scanner *herald_scanner_create(void) {
    try {
        return new herald_scanner();
    } catch (...) {
        return nullptr;
    }
}

extern "C" void herald_scanner_destroy(herald_scanner *scanner) { delete scanner; }

namespace {

/// `length` bytes copied into `buffer` (grown as needed, never shrunk), padded for simdjson.
padded_string_view padded(std::vector<char> &buffer, const char *data, size_t length) {
    if (buffer.size() < length + SIMDJSON_PADDING) buffer.resize(length + SIMDJSON_PADDING);
    if (length > 0) std::memcpy(buffer.data(), data, length);
    std::memset(buffer.data() + length, 0, SIMDJSON_PADDING);
    return padded_string_view(buffer.data(), length, buffer.size());
}

static_assert(HERALD_JSON_PADDING >= SIMDJSON_PADDING, "HERALD_JSON_PADDING is below simdjson's");

/// Whether the document at `data` can be read in place: `capacity` leaves simdjson its padding
/// and those bytes are zero, as `padded` would leave them, so simdjson reads exactly what a copy
/// would give it (it reads the padding, and peeks at the byte past the end when it checks that
/// an invalid document is closed). Spare capacity that holds anything else is copied over.
bool in_place(const uint8_t *data, size_t length, size_t capacity) {
    if (data == nullptr || capacity < length || capacity - length < HERALD_JSON_PADDING) return false;
    static const uint8_t zeros[HERALD_JSON_PADDING] = {};
    return std::memcmp(data + length, zeros, HERALD_JSON_PADDING) == 0;
}

/// The document at `data` read in place when it can be (`in_place`), else copied into `buffer`.
padded_string_view readable(std::vector<char> &buffer, const uint8_t *data, size_t length, size_t capacity) {
    if (in_place(data, length, capacity))
        return padded_string_view(reinterpret_cast<const char *>(data), length, capacity);
    return padded(buffer, reinterpret_cast<const char *>(data), length);
}

herald_bytes bytes(const std::string &text) {
    return herald_bytes{reinterpret_cast<const uint8_t *>(text.data()), text.size()};
}

/// A scalar's token as it stands in the document, without the whitespace after it.
std::string_view trimmed(std::string_view token) {
    while (!token.empty() && (token.back() == ' ' || token.back() == '\n' || token.back() == '\r' || token.back() == '\t')) {
        token.remove_suffix(1);
    }
    return token;
}

/// `"key":`, the key escaped as JSON wants (keys are plain in practice; this keeps odd ones right).
void append_key(std::string &out, std::string_view key) {
    static const char hex[] = "0123456789abcdef";
    out.push_back('"');
    for (unsigned char c : key) {
        if (c == '"' || c == '\\') {
            out.push_back('\\');
            out.push_back(static_cast<char>(c));
        } else if (c < 0x20) {
            out.append("\\u00");
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 15]);
        } else {
            out.push_back(static_cast<char>(c));
        }
    }
    out.append("\":");
}

/// The value's JSON text as it stands in the document (consuming it), for `herald_lookup`.
bool raw(ondemand::value value, std::string_view &out) {
    ondemand::json_type type;
    if (value.type().get(type)) return false;
    switch (type) {
    case ondemand::json_type::object: {
        ondemand::object object;
        if (value.get_object().get(object)) return false;
        return !object.raw_json().get(out);
    }
    case ondemand::json_type::array: {
        ondemand::array array;
        if (value.get_array().get(array)) return false;
        return !array.raw_json().get(out);
    }
    default:
        out = trimmed(value.raw_json_token());
        return true;
    }
}

/// Whether a number simdjson read as zero has a nonzero digit before its exponent: a number
/// too small for a double. simdjson rounds it to zero; Foundation refuses it, and so does Herald.
bool underflows(std::string_view token) {
    for (char c : token) {
        if (c == 'e' || c == 'E') break;
        if (c >= '1' && c <= '9') return true;
    }
    return false;
}

bool check(herald_scanner *s, ondemand::value value, int depth);

/// Reads every member of `object`, the object at `depth`, handing each key and value to `member`,
/// which reads the value to its end. False when a member is not JSON, a key is there twice, or a
/// key has a character past ASCII: Swift's key equality is not byte equality there (the general
/// path decides those).
template <typename Member>
bool each_member(herald_scanner *s, ondemand::object object, int depth, Member member) {
    key_set &keys = s->keys[static_cast<size_t>(depth)];
    keys.clear();
    for (auto field : object) {
        ondemand::raw_json_string raw_key;
        if (field.key().get(raw_key)) return false;
        // Stage 1 found where the key ends: without an escape its first quote ends it, and the
        // key is its bytes. One with an escape is unescaped (into the parser's string buffer).
        const char *begin = raw_key.raw(), *end = begin;
        unsigned char bits = 0;
        // (Stage 1 refuses an unclosed string and an unescaped NUL, so the closing quote stops the
        // loop; the zero padding, in place or copied, would stop it too.)
        while (*end != '"' && *end != '\\' && *end != '\0') bits |= static_cast<unsigned char>(*end++);
        if (*end == '\0') return false;
        std::string_view key(begin, static_cast<size_t>(end - begin));
        if (*end == '\\') {
            if (field.unescaped_key().get(key)) return false;
            bits = 0;
            for (unsigned char c : key) bits |= c;
        }
        if (bits >= 0x80) return false;
        if (!keys.insert(key)) return false;
        ondemand::value value;
        if (field.value().get(value)) return false;
        if (!member(key, value)) return false;
    }
    return keys.finish();
}

/// Reads `value` (inside an array or object at `depth`) to its end, checking all of it: On-Demand
/// checks only what is read, so a member skipped unread could hold anything.
bool check(herald_scanner *s, ondemand::value value, int depth) {
    ondemand::json_type type;
    if (value.type().get(type)) return false;
    switch (type) {
    case ondemand::json_type::object: {
        if (depth >= HERALD_MAX_DEPTH) return false;
        ondemand::object object;
        if (value.get_object().get(object)) return false;
        return each_member(s, object, depth + 1, [s, depth](std::string_view, ondemand::value member) { return check(s, member, depth + 1); });
    }
    case ondemand::json_type::array: {
        if (depth >= HERALD_MAX_DEPTH) return false;
        ondemand::array array;
        if (value.get_array().get(array)) return false;
        for (auto element : array) {
            ondemand::value item;
            if (element.get(item)) return false;
            if (!check(s, item, depth + 1)) return false;
        }
        return true;
    }
    case ondemand::json_type::string: {
        // Stage 1 checked the UTF-8 and that no control character is left unescaped; what it
        // leaves are the escapes. The token runs to the next one: a backslash in it is in the string.
        std::string_view token = value.raw_json_token();
        if (token.find('\\') == std::string_view::npos) {
            ondemand::raw_json_string text;
            return !value.get_raw_json_string().get(text);
        }
        std::string_view text;
        return !value.get_string().get(text);
    }
    case ondemand::json_type::number: {
        std::string_view token = value.raw_json_token();
        double number;
        if (value.get_double().get(number)) return false;  // not a number, or beyond a double
        return number != 0 || !underflows(token);
    }
    case ondemand::json_type::boolean: {
        bool flag;
        return !value.get_bool().get(flag);
    }
    case ondemand::json_type::null: {
        bool null;
        return !value.is_null().get(null) && null;
    }
    }
    return false;
}

/// Reads `value` as a string into `out` when it is a non-empty one, else checks it (a project id
/// that is not a string is no project id).
bool project_id(herald_scanner *s, ondemand::value value, int depth, std::string &out) {
    ondemand::json_type type;
    if (value.type().get(type)) return false;
    if (type != ondemand::json_type::string) return check(s, value, depth);
    std::string_view id;
    if (value.get_string().get(id)) return false;
    if (!id.empty()) out.assign(id);
    return true;
}

/// payload.project_id, else payload.tenant_id, reading (checking) all of the payload.
bool payload(herald_scanner *s, ondemand::value value, bool &is_array) {
    ondemand::json_type type;
    if (value.type().get(type)) return false;
    is_array = type == ondemand::json_type::array;
    if (type != ondemand::json_type::object) return check(s, value, 1);
    ondemand::object object;
    if (value.get_object().get(object)) return false;
    bool read = each_member(s, object, 2, [s](std::string_view key, ondemand::value member) {
        if (key == "project_id") return project_id(s, member, 2, s->project);
        if (key == "tenant_id") return project_id(s, member, 2, s->tenant);
        return check(s, member, 2);
    });
    if (!read) return false;
    if (s->project.empty()) s->project = s->tenant;
    return true;
}

/// Scans one notification object in `json`; 0 when it is one this path handles.
int scan_message(herald_scanner *s, padded_string_view json, bool allow_envelope, herald_notification *out) {
    ondemand::document document;
    if (s->parser.iterate(json).get(document)) return 1;
    ondemand::object object;
    if (document.get_object().get(object)) return 1;
    s->event_type.clear();
    s->message_id.clear();
    s->project.clear();
    s->tenant.clear();
    s->context_project.clear();
    s->context_tenant.clear();
    s->body.assign("{");
    bool first = true, has_event_type = false, payload_is_array = false;
    bool has_version = false, has_message = false;
    padded_string_view message_view;
    bool read = each_member(s, object, 1, [&](std::string_view key, ondemand::value value) {
        // The member's text runs from its first token to the token after it (`,` or `}`).
        const char *start = value.raw_json_token().data();
        if (allow_envelope && key == "oslo.message") {
            std::string_view text;
            if (value.get_string().get(text)) return false;
            has_message = true;
            // Copy before the parser is reused: the view points into its buffer.
            message_view = padded(s->message, text.data(), text.size());
            return true;
        }
        if (allow_envelope && key == "oslo.version") {
            has_version = true;
            return check(s, value, 1);
        }
        if (key.substr(0, 9) == "_context_") {
            // Never delivered: user names, roles, addresses.
            if (key == "_context_project_id") return project_id(s, value, 1, s->context_project);
            if (key == "_context_tenant") return project_id(s, value, 1, s->context_tenant);
            return check(s, value, 1);
        }
        if (key == "event_type" || key == "message_id") {
            std::string_view text;
            if (value.get_string().get(text)) return false;  // not a string: the slow path says so
            (key == "event_type" ? s->event_type : s->message_id).assign(text);
            has_event_type = has_event_type || key == "event_type";
        } else if (key == "payload") {
            if (!payload(s, value, payload_is_array)) return false;
        } else if (!check(s, value, 1)) {
            return false;
        }
        const char *end;
        if (document.current_location().get(end) || end < start) return false;
        if (!first) s->body.push_back(',');
        first = false;
        append_key(s->body, key);
        s->body.append(trimmed(std::string_view(start, static_cast<size_t>(end - start))));
        return true;
    });
    if (!read) return 1;
    // Nothing but whitespace after the object.
    if (document.current_location().error() != OUT_OF_BOUNDS) return 1;
    if (has_version || has_message) {
        if (!has_version || !has_message) return 1;  // half an envelope: refused by the slow path
        return scan_message(s, message_view, false, out);
    }
    s->body.push_back('}');
    if (!has_event_type || s->event_type.empty() || s->message_id.empty()) return 1;
    if (s->event_type == "event" && payload_is_array) return 1;  // Ceilometer's list: the slow path
    if (s->context_project.empty()) s->context_project = s->context_tenant;
    if (s->project.empty()) s->project = s->context_project;
    out->event_type = bytes(s->event_type);
    out->message_id = bytes(s->message_id);
    out->project = bytes(s->project);
    out->context_project = bytes(s->context_project);
    out->body = bytes(s->body);
    out->status = 0;
    return 0;
}

}  // namespace

extern "C" int herald_reads_in_place(const uint8_t *data, size_t length, size_t capacity) {
    return in_place(data, length, capacity) ? 1 : 0;
}

extern "C" int herald_scan(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, herald_notification *out) {
    out->status = 1;
    try {
        return scan_message(scanner, readable(scanner->envelope, data, length, capacity), true, out);
    } catch (...) {
        out->status = 1;
        return 1;
    }
}

extern "C" int herald_lookup_raw(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, const char *pointer,
                                 size_t pointer_length, herald_bytes *out) {
    *out = herald_bytes{nullptr, 0};
    try {
        ondemand::document document;
        if (scanner->parser.iterate(readable(scanner->envelope, data, length, capacity)).get(document)) return 1;
        ondemand::value value;
        if (document.at_pointer(std::string_view(pointer, pointer_length)).get(value)) return 1;
        std::string_view text;
        if (!raw(value, text)) return 1;
        scanner->body.assign(text);
        *out = bytes(scanner->body);
        return 0;
    } catch (...) {
        return 1;
    }
}

extern "C" int herald_lookup(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, const char *pointer,
                             size_t pointer_length, herald_json_value *out) {
    out->kind = HERALD_JSON_MISSING;
    out->number = 0;
    out->text = herald_bytes{nullptr, 0};
    try {
        ondemand::document document;
        if (scanner->parser.iterate(readable(scanner->envelope, data, length, capacity)).get(document)) return 1;
        ondemand::value value;
        if (document.at_pointer(std::string_view(pointer, pointer_length)).get(value)) return 1;
        ondemand::json_type type;
        if (value.type().get(type)) return 1;
        switch (type) {
        case ondemand::json_type::null:
            out->kind = HERALD_JSON_NULL;
            return 0;
        case ondemand::json_type::boolean: {
            bool flag;
            if (value.get_bool().get(flag)) return 1;
            out->kind = HERALD_JSON_BOOL;
            out->number = flag ? 1 : 0;
            return 0;
        }
        case ondemand::json_type::number: {
            double number;
            if (value.get_double().get(number)) return 1;
            out->kind = HERALD_JSON_NUMBER;
            out->number = number;
            return 0;
        }
        case ondemand::json_type::string: {
            std::string_view text;
            if (value.get_string().get(text)) return 1;
            scanner->body.assign(text);
            out->kind = HERALD_JSON_STRING;
            out->text = bytes(scanner->body);
            return 0;
        }
        default: {
            std::string_view text;
            if (!raw(value, text)) return 1;
            scanner->body.assign(text);
            out->kind = HERALD_JSON_COMPOSITE;
            out->text = bytes(scanner->body);
            return 0;
        }
        }
    } catch (...) {
        return 1;
    }
}

extern "C" int herald_lookup_first_string(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, const char *pointers,
                                          const size_t *pointer_lengths, size_t count, size_t max_bytes, size_t *found,
                                          herald_bytes *out) {
    *found = count;
    *out = herald_bytes{nullptr, 0};
    try {
        ondemand::document document;
        bool iterated = false;
        size_t offset = 0;
        for (size_t i = 0; i < count; i++) {
            std::string_view pointer(pointers + offset, pointer_lengths[i]);
            offset += pointer_lengths[i];
            // Stage 1 once; `at_pointer` rewinds the document for each pointer. After any error
            // but a clean "no such field" or a non-index segment into an array (both returned
            // before the iterator moves on: the document stays whole), or once the iterator was
            // abandoned (a malformed array makes `at` give up and drop its parser, which a rewind
            // would then read), the next pointer gets a document iterated anew: no pointer's
            // answer depends on the pointers before it.
            if (iterated && !document.is_alive()) iterated = false;
            if (!iterated) {
                if (scanner->parser.iterate(readable(scanner->envelope, data, length, capacity)).get(document))
                    return 1;
                iterated = true;
            }
            ondemand::value value;
            auto error = document.at_pointer(pointer).get(value);
            if (error) {
                if (error != simdjson::NO_SUCH_FIELD && error != simdjson::INCORRECT_TYPE) iterated = false;
                continue;
            }
            ondemand::json_type type;
            if (value.type().get(type)) {
                iterated = false;
                continue;
            }
            if (type != ondemand::json_type::string) continue;
            std::string_view text;
            if (value.get_string().get(text)) {
                iterated = false;
                continue;
            }
            if (text.empty() || text.size() > max_bytes) continue;
            scanner->body.assign(text);
            *out = bytes(scanner->body);
            *found = i;
            return 0;
        }
        return 1;
    } catch (...) {
        return 1;
    }
}
