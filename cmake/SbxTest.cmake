# sbx_test(NAME <name> LABEL unit|kvm|e2e SRCS <files...> [DEPS <targets...>])
#
# Builds one GoogleTest executable and registers each of its test cases with
# ctest under LABEL, so `ctest -L unit` runs only the tests that need neither
# /dev/kvm nor built images. A test that calls GTEST_SKIP() is reported by
# ctest as skipped (not passed), with the reason in its output.
include(GoogleTest)

function(sbx_test)
  cmake_parse_arguments(T "" "NAME;LABEL" "SRCS;DEPS" ${ARGN})
  if(NOT T_LABEL MATCHES "^(unit|kvm|e2e)$")
    message(FATAL_ERROR "sbx_test(${T_NAME}): LABEL must be unit, kvm or e2e")
  endif()
  add_executable(${T_NAME} ${T_SRCS})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} GTest::gmock GTest::gtest_main)
  gtest_discover_tests(${T_NAME}
    TEST_PREFIX "${T_NAME}."
    PROPERTIES LABELS ${T_LABEL}
               SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
    DISCOVERY_TIMEOUT 30)
endfunction()
