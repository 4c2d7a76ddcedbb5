# Helpers after abseil's absl_cc_library / absl_cc_test.
#
# hkv_cc_library(NAME foo SRCS a.cc HDRS a.h DEPS hkv::common LABELS ...)
#   builds hkv_foo with alias hkv::foo. A header-only library has no SRCS.
# hkv_cc_test(NAME foo_test SRCS foo_test.cc DEPS hkv::foo LABELS unit)
#   builds bin/foo_test and registers each gtest case with ctest under LABELS (a list: every
#   label applies).

function(hkv_cc_library)
  cmake_parse_arguments(HKV "" "NAME" "SRCS;HDRS;DEPS;PRIVATE_DEPS" ${ARGN})
  set(_target hkv_${HKV_NAME})
  if(HKV_SRCS)
    add_library(${_target} STATIC ${HKV_SRCS} ${HKV_HDRS})
    target_link_libraries(${_target} PUBLIC ${HKV_DEPS} PRIVATE ${HKV_PRIVATE_DEPS})
    target_compile_options(${_target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-sign-compare>)
  else()
    add_library(${_target} INTERFACE)
    target_link_libraries(${_target} INTERFACE ${HKV_DEPS})
  endif()
  add_library(hkv::${HKV_NAME} ALIAS ${_target})
endfunction()

function(hkv_cc_test)
  cmake_parse_arguments(HKV "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT HKV_LABELS)
    set(HKV_LABELS unit)
  endif()
  add_executable(${HKV_NAME} ${HKV_SRCS})
  target_link_libraries(${HKV_NAME} PRIVATE ${HKV_DEPS} GTest::gmock GTest::gtest_main)
  # NOTE(newcomer): gtest_discover_tests flattens PROPERTIES into one list, so a LABELS value
  # "gpu;multi_gpu" reached set_tests_properties as LABELS gpu and an unpaired word that ctest
  # ignored. One LABELS pair per label instead: ctest adds each to the test's labels (guarded by
  # tests/regress/multi_gpu_label_test.cmake).
  set(_properties "")
  foreach(_label IN LISTS HKV_LABELS)
    list(APPEND _properties LABELS ${_label})
  endforeach()
  gtest_discover_tests(${HKV_NAME}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
    PROPERTIES ${_properties}
    DISCOVERY_TIMEOUT 60)
endfunction()
