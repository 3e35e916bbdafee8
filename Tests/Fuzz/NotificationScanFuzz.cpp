// libFuzzer target for the notification decoder's C++ fast path (Sources/CNotificationScan):
// every entry point of its C API on hostile bytes, under AddressSanitizer and
// UndefinedBehaviorSanitizer. Built and run by scripts/fuzz-notification-scan.
//
// Besides "no crash, no out-of-bounds read", it checks one documented property: a document
// read in place (zero padding present) and one copied into the scanner's own buffer give the
// same answers (CNotificationScan.h, HERALD_JSON_PADDING).
#include "CNotificationScan.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

herald_scanner *shared_scanner() {
    static herald_scanner *scanner = herald_scanner_create();
    return scanner;
}

/// The bytes an answer points at, copied (they are valid only until the scanner's next use);
/// reading them all lets AddressSanitizer check the answer's bounds.
std::string copied(herald_bytes bytes) {
    if (bytes.length == 0) return std::string();
    return std::string(reinterpret_cast<const char *>(bytes.data), bytes.length);
}

struct Scanned {
    int status;
    std::string event_type, message_id, project, context_project, body;
    bool operator==(const Scanned &other) const {
        return status == other.status && event_type == other.event_type && message_id == other.message_id &&
               project == other.project && context_project == other.context_project && body == other.body;
    }
};

Scanned scan(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity) {
    herald_notification out;
    std::memset(&out, 0, sizeof out);
    int status = herald_scan(scanner, data, length, capacity, &out);
    if (status != out.status) __builtin_trap();
    if (status != 0) return Scanned{status, "", "", "", "", ""};
    return Scanned{status, copied(out.event_type), copied(out.message_id), copied(out.project),
                   copied(out.context_project), copied(out.body)};
}

struct Looked {
    int found;
    int kind;
    double number;
    std::string text;
    bool operator==(const Looked &other) const {
        // NaN never comes out of JSON; compare numbers bit for bit anyway.
        return found == other.found && kind == other.kind &&
               std::memcmp(&number, &other.number, sizeof number) == 0 && text == other.text;
    }
};

Looked lookup(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity, const std::string &pointer) {
    herald_json_value value;
    std::memset(&value, 0, sizeof value);
    int found = herald_lookup(scanner, data, length, capacity, pointer.data(), pointer.size(), &value);
    if (found != 0) return Looked{found, 0, 0, ""};
    return Looked{found, value.kind, value.number, copied(value.text)};
}

Looked lookup_raw(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity,
                  const std::string &pointer) {
    herald_bytes raw{nullptr, 0};
    int found = herald_lookup_raw(scanner, data, length, capacity, pointer.data(), pointer.size(), &raw);
    if (found != 0) return Looked{found, 0, 0, ""};
    return Looked{found, 0, 0, copied(raw)};
}

Looked lookup_first(herald_scanner *scanner, const uint8_t *data, size_t length, size_t capacity,
                    const std::vector<std::string> &pointers) {
    std::string joined;
    std::vector<size_t> lengths;
    for (const auto &pointer : pointers) {
        joined += pointer;
        lengths.push_back(pointer.size());
    }
    size_t position = 0;
    herald_bytes out{nullptr, 0};
    int found = herald_lookup_first_string(scanner, data, length, capacity, joined.data(), lengths.data(),
                                           lengths.size(), 255, &position, &out);
    if (found != 0) return Looked{found, 0, 0, ""};
    if (position >= pointers.size()) __builtin_trap();
    return Looked{found, static_cast<int>(position), 0, copied(out)};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    herald_scanner *scanner = shared_scanner();
    if (scanner == nullptr) __builtin_trap();
    // Exactly `size` readable bytes (copied by the scanner), and the same bytes with the zero
    // padding that lets it read them in place.
    std::vector<uint8_t> exact(data, data + size);
    std::vector<uint8_t> padded(size + HERALD_JSON_PADDING, 0);
    if (size > 0) std::memcpy(padded.data(), data, size);
    if (herald_reads_in_place(exact.data(), size, size) != 0 && size > 0) __builtin_trap();
    if (herald_reads_in_place(padded.data(), size, padded.size()) != 1) __builtin_trap();

    if (!(scan(scanner, exact.data(), size, size) == scan(scanner, padded.data(), size, padded.size())))
        __builtin_trap();

    // Pointers the shipped event definitions use, and one made of the input's first bytes (an
    // operator's definitions file is input too: `~`, `~1`, `/0`, empty segments).
    std::vector<std::string> pointers = {"/payload/project_id", "/payload/tenant_id", "/_context_project_id",
                                         "/payload/nova_object.data/tenant_id", "/payload/0/traits", ""};
    size_t taken = size < 24 ? size : 24;
    pointers.push_back(std::string(reinterpret_cast<const char *>(data), taken));
    for (const auto &pointer : pointers) {
        if (!(lookup(scanner, exact.data(), size, size, pointer) ==
              lookup(scanner, padded.data(), size, padded.size(), pointer)))
            __builtin_trap();
        if (!(lookup_raw(scanner, exact.data(), size, size, pointer) ==
              lookup_raw(scanner, padded.data(), size, padded.size(), pointer)))
            __builtin_trap();
    }
    if (!(lookup_first(scanner, exact.data(), size, size, pointers) ==
          lookup_first(scanner, padded.data(), size, padded.size(), pointers)))
        __builtin_trap();
    return 0;
}
