#ifndef SBX_BASE_STATUS_MACROS_H_
#define SBX_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Debian 12's abseil (20220623) ships neither RETURN_IF_ERROR nor
// ASSIGN_OR_RETURN; these are the project's own.

// Evaluates `expr` (an absl::Status) once; returns it from the enclosing
// function if it is not OK.
#define SBX_RETURN_IF_ERROR(expr)                          \
  do {                                                     \
    ::absl::Status sbx_status_ = (expr);                   \
    if (!sbx_status_.ok()) return sbx_status_;             \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>) once; returns its status from the
// enclosing function if it is not OK, else moves its value into `lhs`, which
// may be a declaration: SBX_ASSIGN_OR_RETURN(auto fd, OpenFile(path));
#define SBX_ASSIGN_OR_RETURN(lhs, rexpr) \
  SBX_ASSIGN_OR_RETURN_IMPL_(SBX_STATUS_CONCAT_(sbx_statusor_, __LINE__), lhs, rexpr)

#define SBX_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                               \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#define SBX_STATUS_CONCAT_(a, b) SBX_STATUS_CONCAT_INNER_(a, b)
#define SBX_STATUS_CONCAT_INNER_(a, b) a##b

#endif  // SBX_BASE_STATUS_MACROS_H_
