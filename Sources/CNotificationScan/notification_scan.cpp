// The fast path of NotificationDecoder, over simdjson's On-Demand API: finds the fields
// Herald routes and matches by, and copies the event out without re-encoding it.
#include "CNotificationScan.h"

#include <simdjson.h>

#include <cstring>
#include <string>
#include <vector>
#include <string_view>

using namespace simdjson;

struct herald_scanner {
    ondemand::parser parser;
    // Reused input buffers (simdjson reads up to SIMDJSON_PADDING bytes past the end).
    std::vector<char> envelope;
    std::vector<char> message;
    std::string event_type;
    std::string message_id;
    std::string project;
    std::string context_project;
    std::string body;
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
    std::memcpy(buffer.data(), data, length);
    std::memset(buffer.data() + length, 0, SIMDJSON_PADDING);
    return padded_string_view(buffer.data(), length, buffer.size());
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

/// The value's JSON text as it stands in the document (consuming it).
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

/// payload.project_id, else payload.tenant_id, appending the payload's raw JSON to the body.
bool payload(ondemand::value value, herald_scanner *s, bool &is_array) {
    ondemand::json_type type;
    if (value.type().get(type)) return false;
    is_array = type == ondemand::json_type::array;
    if (type != ondemand::json_type::object) {
        std::string_view text;
        if (!raw(value, text)) return false;
        s->body.append(text);
        return true;
    }
    ondemand::object object;
    if (value.get_object().get(object)) return false;
    std::string_view text;
    // Read the two keys, then rewind for the raw text.
    std::string tenant;
    for (auto field : object) {
        std::string_view key;
        if (field.unescaped_key().get(key)) return false;
        if (key == "project_id" || key == "tenant_id") {
            std::string_view id;
            if (!field.value().get_string().get(id) && !id.empty()) {
                if (key == "project_id") s->project.assign(id);
                else tenant.assign(id);
            }
        }
    }
    if (s->project.empty()) s->project = tenant;
    if (object.reset().error()) return false;
    if (object.raw_json().get(text)) return false;
    s->body.append(text);
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
    s->context_project.clear();
    s->body.assign("{");
    std::string context_tenant;
    bool first = true, has_event_type = false, payload_is_array = false;
    std::string_view oslo_message;
    padded_string_view message_view;
    bool is_envelope = false;
    for (auto field : object) {
        std::string_view key;
        if (field.unescaped_key().get(key)) return 1;
        ondemand::value value;
        if (field.value().get(value)) return 1;
        if (allow_envelope && key == "oslo.message") {
            if (value.get_string().get(oslo_message)) return 1;
            is_envelope = true;
            // Copy before the parser is reused: the view points into its buffer.
            message_view = padded(s->message, oslo_message.data(), oslo_message.size());
            continue;
        }
        if (key.substr(0, 9) == "_context_") {
            if (key == "_context_project_id" || key == "_context_tenant") {
                std::string_view id;
                if (!value.get_string().get(id) && !id.empty()) {
                    if (key == "_context_project_id") s->context_project.assign(id);
                    else context_tenant.assign(id);
                }
            }
            continue;  // never delivered: user names, roles, addresses
        }
        if (!first) s->body.push_back(',');
        first = false;
        append_key(s->body, key);
        if (key == "event_type" || key == "message_id") {
            std::string_view token = trimmed(value.raw_json_token());  // a peek: the value stays unread
            std::string_view text;
            if (value.get_string().get(text)) return 1;
            (key == "event_type" ? s->event_type : s->message_id).assign(text);
            has_event_type = has_event_type || key == "event_type";
            s->body.append(token);
            continue;
        }
        if (key == "payload") {
            if (!payload(value, s, payload_is_array)) return 1;
            continue;
        }
        std::string_view text;
        if (!raw(value, text)) return 1;
        s->body.append(text);
    }
    if (is_envelope) {
        return scan_message(s, message_view, false, out);
    }
    s->body.push_back('}');
    if (!has_event_type || s->event_type.empty() || s->message_id.empty()) return 1;
    if (s->event_type == "event" && payload_is_array) return 1;  // Ceilometer's list: the slow path
    if (s->context_project.empty()) s->context_project = context_tenant;
    if (s->project.empty()) s->project = s->context_project;
    out->event_type = bytes(s->event_type);
    out->message_id = bytes(s->message_id);
    out->project = bytes(s->project);
    out->body = bytes(s->body);
    out->status = 0;
    return 0;
}

}  // namespace

extern "C" int herald_scan(herald_scanner *scanner, const uint8_t *data, size_t length, herald_notification *out) {
    out->status = 1;
    try {
        return scan_message(scanner, padded(scanner->envelope, reinterpret_cast<const char *>(data), length), true, out);
    } catch (...) {
        out->status = 1;
        return 1;
    }
}

extern "C" int herald_lookup(herald_scanner *scanner, const uint8_t *data, size_t length, const char *pointer, size_t pointer_length,
                             herald_json_value *out) {
    out->kind = HERALD_JSON_MISSING;
    out->number = 0;
    out->text = herald_bytes{nullptr, 0};
    try {
        ondemand::document document;
        if (scanner->parser.iterate(padded(scanner->envelope, reinterpret_cast<const char *>(data), length)).get(document)) return 1;
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
