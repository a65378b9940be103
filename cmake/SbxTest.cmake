# sbx_test(NAME <name> LABEL unit|kvm|e2e SRCS <files...> [DEPS <targets...>])
#
# Builds one GoogleTest executable and registers it with ctest under LABEL,
# so `ctest -L unit` runs only the tests that need neither /dev/kvm nor
# built images.
#
# unit: each test case is its own ctest test. A test that calls
# GTEST_SKIP() is reported by ctest as skipped, with the reason.
#
# kvm, e2e: the whole binary is one ctest test, run through
# scripts/in-kvm-vm: on a host with a working /dev/kvm that just runs it;
# elsewhere it boots an emulated KVM host (images/kvmhost) once for the
# binary and runs it there. in-kvm-vm exits 77 (skipped) when it cannot
# provide KVM outside CI, and fails under CI=true.
include(GoogleTest)

set(SBX_IN_KVM_VM ${PROJECT_SOURCE_DIR}/scripts/in-kvm-vm)

function(sbx_test)
  cmake_parse_arguments(T "" "NAME;LABEL" "SRCS;DEPS" ${ARGN})
  if(NOT T_LABEL MATCHES "^(unit|kvm|e2e)$")
    message(FATAL_ERROR "sbx_test(${T_NAME}): LABEL must be unit, kvm or e2e")
  endif()
  add_executable(${T_NAME} ${T_SRCS})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} GTest::gmock GTest::gtest_main)
  if(T_LABEL STREQUAL "unit")
    gtest_discover_tests(${T_NAME}
      TEST_PREFIX "${T_NAME}."
      PROPERTIES LABELS unit
                 SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
      DISCOVERY_TIMEOUT 30)
  else()
    # Emulated KVM is slow: a binary gets up to 25 minutes. One emulated
    # CPU: with two (QEMU's multi-threaded TCG) the emulated host itself hung
    # more often. The emulated host still stops making progress now and
    # then (QEMU's nested-SVM emulation; ~1 run in 3 of a Linux-booting e2e
    # binary; three in a row were seen once): in-kvm-vm notices from its
    # heartbeat within 90 s and, with --retries, runs the binary again in a
    # fresh VM. Only that counts as a retry; a test that fails or times out
    # fails. Where /dev/kvm works, in-kvm-vm just execs.
    # How many of these binaries run at once is the host's choice: each
    # takes one slot of the resource "kvm", and scripts/test writes the
    # resource spec from scripts/in-kvm-vm --probe (one slot for the
    # emulated host, more where /dev/kvm works). Bare ctest without
    # --resource-spec-file does not limit them (ctest runs serially unless
    # given -j).
    add_test(NAME ${T_NAME}
      COMMAND ${SBX_IN_KVM_VM} --timeout 1500 --retries 4 -- $<TARGET_FILE:${T_NAME}>
      WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
    set_tests_properties(${T_NAME} PROPERTIES
      LABELS ${T_LABEL}
      SKIP_RETURN_CODE 77
      SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
      RESOURCE_GROUPS "kvm:1"
      TIMEOUT 2400)
  endif()
endfunction()
