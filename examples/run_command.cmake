# Included by the examples' CTest scripts. run_command(ARGS...) runs a command through sh, each
# argument single-quoted (EMPTY stands for an empty argument, which a CMake list would drop), and
# leaves its exit status in `rc` and its stdout and stderr in `out` and `err`.
function(run_command)
  set(command "")
  foreach(argument IN LISTS ARGN)
    if(argument STREQUAL "EMPTY")
      string(APPEND command " ''")
    else()
      string(APPEND command " '${argument}'")
    endif()
  endforeach()
  execute_process(COMMAND sh -c "${command}" RESULT_VARIABLE status OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
  set(rc "${status}" PARENT_SCOPE)
  set(out "${stdout}" PARENT_SCOPE)
  set(err "${stderr}" PARENT_SCOPE)
endfunction()
