#include "sandboxd/ctl/format.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace sbx::ctl {

std::string FormatTable(const std::vector<std::vector<std::string>>& rows,
                        const std::vector<size_t>& right) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      bool last = i + 1 == row.size();
      bool r = std::find(right.begin(), right.end(), i) != right.end();
      std::string pad(width[i] - row[i].size(), ' ');
      if (r) {
        line += pad + row[i];
      } else {
        line += row[i];
        if (!last) line += pad;
      }
      if (!last) line += "  ";
    }
    // A right-aligned or empty last cell can leave trailing blanks.
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  }
  return out;
}

std::string FormatAge(absl::Duration age) {
  if (age < absl::ZeroDuration()) age = absl::ZeroDuration();
  int64_t s = absl::ToInt64Seconds(age);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrCat(s / 60, "m");
  if (s < 86400) return absl::StrCat(s / 3600, "h");
  return absl::StrCat(s / 86400, "d");
}

std::string FormatMib(uint64_t mib) {
  if (mib < 1024) return absl::StrCat(mib, "M");
  if (mib % 1024 == 0) return absl::StrCat(mib / 1024, "G");
  return absl::StrFormat("%.1fG", static_cast<double>(mib) / 1024);
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  static const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes) / 1024;
  size_t u = 0;
  while (v >= 1024 && u + 1 < 4) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, kUnits[u]);
}

std::string FormatMode(sbx::v1::FileType type, uint32_t mode) {
  std::string s(10, '-');
  switch (type) {
    case sbx::v1::DIRECTORY: s[0] = 'd'; break;
    case sbx::v1::SYMLINK: s[0] = 'l'; break;
    case sbx::v1::OTHER: s[0] = '?'; break;
    default: break;
  }
  const char* rwx = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i) {
    if (mode & (0400u >> i)) s[1 + i] = rwx[i];
  }
  auto special = [&s](int pos, bool set, char on_exec, char on_noexec) {
    if (set) s[pos] = s[pos] == 'x' ? on_exec : on_noexec;
  };
  special(3, mode & 04000, 's', 'S');
  special(6, mode & 02000, 's', 'S');
  special(9, mode & 01000, 't', 'T');
  return s;
}

absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

std::string FormatTime(const google::protobuf::Timestamp& t, absl::TimeZone tz) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M", FromProto(t), tz);
}

std::string FormatLabels(const google::protobuf::Map<std::string, std::string>& labels) {
  std::map<std::string, std::string> sorted(labels.begin(), labels.end());
  return absl::StrJoin(sorted, ",", absl::PairFormatter("="));
}

std::string StateName(sbx::v1::SandboxState state) {
  if (state == sbx::v1::SANDBOX_STATE_UNSPECIFIED) return "unknown";
  return absl::AsciiStrToLower(sbx::v1::SandboxState_Name(state));
}

std::string TemplateStateName(sbx::v1::TemplateState state) {
  if (state == sbx::v1::TEMPLATE_STATE_UNSPECIFIED) return "unknown";
  return absl::AsciiStrToLower(sbx::v1::TemplateState_Name(state));
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.always_print_primitive_fields = true;
  opts.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, opts).ok()) {
    return "{}\n";  // only for messages with invalid Any/Struct fields: none here
  }
  if (out.empty() || out.back() != '\n') out += '\n';
  return out;
}

}  // namespace sbx::ctl
