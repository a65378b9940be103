# Included by the top-level CMakeLists.txt when SBX_FUZZ is on, before any
# target exists, so that every library a fuzzer links (sbx::vmm,
# sbx_agent_frame, the generated protobuf code, sbx::base) is built with
# libFuzzer's coverage instrumentation and with ASan and UBSan. The fuzz
# targets themselves link -fsanitize=fuzzer (fuzz/CMakeLists.txt).
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "SBX_FUZZ needs clang (libFuzzer ships with it): "
    "configure a separate build directory with CC=clang CXX=clang++, "
    "or use scripts/fuzz")
endif()
if(SBX_SANITIZE)
  message(FATAL_ERROR "SBX_FUZZ already builds with ASan and UBSan: leave SBX_SANITIZE off")
endif()
add_compile_options(-fsanitize=fuzzer-no-link,address,undefined
                    -fno-sanitize-recover=undefined -fno-omit-frame-pointer
                    -gline-tables-only)
add_link_options(-fsanitize=address,undefined)
# libFuzzer itself is in clang's runtime package, which apt may skip
# (a Recommends of clang).
execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-resource-dir
                OUTPUT_VARIABLE _sbx_clang_resources
                OUTPUT_STRIP_TRAILING_WHITESPACE)
set(_sbx_libfuzzer
    "${_sbx_clang_resources}/lib/linux/libclang_rt.fuzzer-${CMAKE_SYSTEM_PROCESSOR}.a")
if(NOT EXISTS "${_sbx_libfuzzer}")
  string(REGEX MATCH "^[0-9]+" _sbx_clang_major "${CMAKE_CXX_COMPILER_VERSION}")
  message(FATAL_ERROR "SBX_FUZZ: ${_sbx_libfuzzer} is missing: "
    "apt-get install libclang-rt-${_sbx_clang_major}-dev")
endif()
