# Guards "the multi_gpu ctest label is never applied": every gtest case of a test registered with
# LABELS "gpu;multi_gpu" carries both labels, so `ctest -L multi_gpu` selects the multi-node GPU
# tests. Run by ctest in script mode: cmake -DCTEST=... -DBUILD_DIR=... -P this file.

cmake_minimum_required(VERSION 3.25)

# Sets `out` to the names of the tests `ctest -N` lists under `args` (a label selection or none).
function(ListTests out)
  execute_process(COMMAND ${CTEST} -N ${ARGN} WORKING_DIRECTORY ${BUILD_DIR}
    OUTPUT_VARIABLE text RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "ctest -N ${ARGN} failed (${rc}):\n${text}")
  endif()
  string(REGEX MATCHALL "Test +#[0-9]+: [^\n]+" lines "${text}")
  set(names "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^Test +#[0-9]+: " "" name "${line}")
    list(APPEND names "${name}")
  endforeach()
  set(${out} "${names}" PARENT_SCOPE)
endfunction()

ListTests(all)
ListTests(multi_gpu -L "^multi_gpu$")
ListTests(gpu -L "^gpu$")

set(multi_node "")
foreach(name IN LISTS all)
  if(name MATCHES "^MultiNodeGpuTest\\.")
    list(APPEND multi_node "${name}")
  endif()
endforeach()
if(NOT multi_node)
  message(FATAL_ERROR "no MultiNodeGpuTest cases registered (is multi_node_gpu_test built?): "
    "${all}")
endif()
foreach(name IN LISTS multi_node)
  if(NOT name IN_LIST multi_gpu)
    message(FATAL_ERROR "${name} lacks the multi_gpu label; ctest -L multi_gpu selects: "
      "${multi_gpu}")
  endif()
  if(NOT name IN_LIST gpu)
    message(FATAL_ERROR "${name} lacks the gpu label")
  endif()
endforeach()
foreach(name IN LISTS multi_gpu)
  if(NOT name IN_LIST multi_node)
    message(FATAL_ERROR "${name} has the multi_gpu label but is not a multi-node GPU test")
  endif()
endforeach()
list(LENGTH multi_node count)
message(STATUS "ctest -L multi_gpu selects the ${count} MultiNodeGpuTest cases")
