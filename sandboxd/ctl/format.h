#ifndef SBX_SANDBOXD_CTL_FORMAT_H_
#define SBX_SANDBOXD_CTL_FORMAT_H_

// How sandboxctl shows things to a person: tables, ages, sizes, file modes;
// and to a program: JSON.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"
#include "sbx/v1/sandbox.pb.h"

namespace sbx::ctl {

// Columns padded to their widest cell, two spaces apart; the last column is
// not padded. Columns whose index is in `right` are right-aligned.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows,
                        const std::vector<size_t>& right = {});

// The largest whole unit: "42s", "5m", "3h", "12d". Negative: "0s".
std::string FormatAge(absl::Duration age);

// MiB as a person reads them: "512M", "2G", "1.5G".
std::string FormatMib(uint64_t mib);

// Bytes: "812 B", "12.3 KiB", "4.0 MiB", "1.2 GiB".
std::string FormatBytes(uint64_t bytes);

// "-rw-r--r--", "drwxr-xr-x", "lrwxrwxrwx" from a type and permission bits
// (with setuid/setgid/sticky shown as ls does).
std::string FormatMode(sbx::v1::FileType type, uint32_t mode);

// "2024-05-01 13:04" in `tz`; "-" for an unset timestamp.
std::string FormatTime(const google::protobuf::Timestamp& t, absl::TimeZone tz);

absl::Time FromProto(const google::protobuf::Timestamp& t);

// "k=v,k2=v2" (sorted by key).
std::string FormatLabels(const google::protobuf::Map<std::string, std::string>& labels);

// "running", "sleeping", ...
std::string StateName(sbx::v1::SandboxState state);
std::string TemplateStateName(sbx::v1::TemplateState state);

// The message as indented JSON with the proto's field names (snake_case),
// every field present, enums by name; ends with a newline.
std::string ToJson(const google::protobuf::Message& message);

}  // namespace sbx::ctl

#endif  // SBX_SANDBOXD_CTL_FORMAT_H_
