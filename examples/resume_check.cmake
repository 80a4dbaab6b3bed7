# A training run stopped part-way and resumed ends exactly where the same run taken in one go ends:
# the trained file and the learning curve are the same bytes. Run by ctest (examples/CMakeLists.txt):
#   cmake -DPROGRAM=<trainer> -DARGS="<its options, as a shell would read them>" -DSTOP_AT=<step>
#         -DRESULT=<file in --out> -DWORK_DIR=<scratch> -P resume_check.cmake
# Also checks that the stopped run's directory is refused without --resume (nothing is overwritten).
file(REMOVE_RECURSE "${WORK_DIR}")

# The options go through sh, which keeps empty arguments ('') that a CMake list would drop.
function(run name expect_success)
  string(JOIN " " more ${ARGN})
  execute_process(COMMAND sh -c "'${PROGRAM}' ${ARGS} ${more}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(expect_success AND NOT rc EQUAL 0)
    message(FATAL_ERROR "${name} failed (${rc}):\n${out}\n${err}")
  elseif(NOT expect_success AND rc EQUAL 0)
    message(FATAL_ERROR "${name} should have been refused:\n${out}")
  endif()
  set(last_error "${err}" PARENT_SCOPE)
endfunction()

run("the run in one go" TRUE --out "${WORK_DIR}/straight")
run("the run's first slice" TRUE --out "${WORK_DIR}/sliced" --stop-at ${STOP_AT})
run("a new run into the stopped run's directory" FALSE --out "${WORK_DIR}/sliced")
if(NOT last_error MATCHES "holds a run.*--resume")
  message(FATAL_ERROR "the refusal does not say --resume: ${last_error}")
endif()
run("the run resumed" TRUE --out "${WORK_DIR}/sliced" --resume)

foreach(file IN ITEMS "${RESULT}" learning_curve.csv)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${WORK_DIR}/straight/${file}" "${WORK_DIR}/sliced/${file}"
                  RESULT_VARIABLE differ)
  if(differ)
    message(FATAL_ERROR "${file} of the resumed run differs from the run in one go")
  endif()
  message(STATUS "${file}: the resumed run's equals the run in one go's, byte for byte")
endforeach()
