# The examples refuse bad input before their first training step, with a message naming the option
# and the value, and never die of a signal (a division by zero, an abort). Run by ctest
# (examples/CMakeLists.txt):
#   cmake -DPRETRAIN=<pretrain> -DTRAIN_COPROCESSOR=<train_coprocessor> -DAUTODIFF_DEMO=<autodiff_demo>
#         -DSOURCE_DIR=<repo> -DWORK_DIR=<scratch> [-DKEEP_GOING=ON] -P robustness_check.cmake
# KEEP_GOING reports every failing case instead of stopping at the first.
# Every run uses the tiny test fixtures (a Llama decoder of width 64, a 50 KB text sample) and at
# most two steps, so the whole check takes seconds; the refusals themselves come before any step.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(fixture "${SOURCE_DIR}/tests/data/hf/llama")
set(sample "${SOURCE_DIR}/tests/data/sample.txt")
file(WRITE "${WORK_DIR}/a-file" "not a directory\n")
set(failure FATAL_ERROR)
if(KEEP_GOING)
  set(failure SEND_ERROR)
endif()

include("${CMAKE_CURRENT_LIST_DIR}/run_command.cmake")

# `name` must be refused: a non-zero exit that is no signal (sh reports a signal as 128 + its
# number), with `pattern` in its stderr.
function(expect_refused name pattern)
  run_command(${ARGN})
  if(rc EQUAL 0)
    message(${failure} "${name}: accepted, should have been refused:\n${out}\n${err}")
  elseif(NOT rc MATCHES "^[0-9]+$" OR rc GREATER 127)
    message(${failure} "${name}: died of a signal (exit ${rc}) instead of refusing:\n${out}\n${err}")
  elseif(NOT err MATCHES "${pattern}")
    message(${failure} "${name}: refused (exit ${rc}) without '${pattern}':\n${out}\n${err}")
  else()
    message(STATUS "${name}: refused")
  endif()
endfunction()

function(expect_help name program)
  run_command("${program}" --help)
  if(NOT rc EQUAL 0 OR NOT out MATCHES "Usage:")
    message(${failure} "${name} --help: exit ${rc}, expected usage:\n${out}\n${err}")
  else()
    message(STATUS "${name} --help: usage")
  endif()
endfunction()

# `base` (a command list) with `option` set to `value` in `cmd`: CLI11 refuses an option given twice,
# so a case changes the option in place rather than appending it again.
function(with base option value)
  set(args ${${base}})
  list(FIND args "${option}" at)
  if(at EQUAL -1)
    list(APPEND args "${option}" "${value}")
  else()
    math(EXPR at "${at} + 1")
    list(REMOVE_AT args ${at})
    list(INSERT args ${at} "${value}")
  endif()
  set(cmd ${args} PARENT_SCOPE)
endfunction()

set(pretrain "${PRETRAIN}" --fortunes EMPTY --dictionary EMPTY --text "${sample}" --layers 1 --heads 2 --dim 16
    --mlp 32 --seq-len 32 --batch 2 --steps 2 --warmup 1 --log-every 1 --eval-every 2 --eval-batches 1
    --checkpoint-every 2 --sample-bytes 4 --threads 1 --out "${WORK_DIR}/p")
set(coprocessor "${TRAIN_COPROCESSOR}" --decoder "${fixture}" --fortunes EMPTY --dictionary EMPTY --text "${sample}"
    --latents 2 --ahead 4 --points 4 --batch 2 --seq-len 32 --steps 2 --warmup 1 --checkpoint-every 2
    --curve-every 1 --curve-eval-every 2 --curve-eval-batches 1 --eval-batches 1 --eval-points 4 --threads 1
    --out "${WORK_DIR}/c")

foreach(program IN ITEMS PRETRAIN TRAIN_COPROCESSOR AUTODIFF_DEMO)
  expect_help(${program} "${${program}}")
  expect_refused("${program} --bogus" "--bogus" "${${program}}" --bogus)
endforeach()

# Zero intervals: the step modulo 0 was a division by zero (SIGFPE) at the first step.
foreach(option IN ITEMS --checkpoint-every --eval-every --log-every)
  with(pretrain ${option} 0)
  expect_refused("pretrain ${option} 0" "${option}: must be at least 1, got 0" ${cmd})
endforeach()
with(pretrain --eval-every 3)
with(cmd --log-every 2)
expect_refused("pretrain --eval-every 3 --log-every 2" "--eval-every 3 must be a multiple of --log-every 2" ${cmd})
with(coprocessor --checkpoint-every 0)
expect_refused("train_coprocessor --checkpoint-every 0" "--checkpoint-every: must be at least 1, got 0" ${cmd})
with(coprocessor --curve-every 0)
expect_refused("train_coprocessor --curve-every 0 --curve-eval-every 2"
               "--curve-eval-every 2 must be a multiple of --curve-every 0" ${cmd})

# Thread counts: 0 ran on one thread and printed "0 threads".
foreach(threads IN ITEMS 0 -1)
  foreach(case IN ITEMS pretrain coprocessor)
    with(${case} --threads ${threads})
    expect_refused("${case} --threads ${threads}" "--threads: must be at least 1, got ${threads}" ${cmd})
  endforeach()
endforeach()

with(pretrain --arch llama3)
expect_refused("pretrain --arch llama3" "--arch: llama3 not in" ${cmd})

# LoRA ranks: negative, and above the decoder's width of 64.
with(coprocessor --lora-rank -1)
expect_refused("train_coprocessor --lora-rank -1" "--lora-rank: must be at least 0, got -1" ${cmd})
with(coprocessor --lora-rank 65)
expect_refused("train_coprocessor --lora-rank 65" "--lora-rank 65 exceeds the width 64" ${cmd})

# Output directories that cannot take the results: one that cannot be created (under a regular
# file) and one that exists but takes no files (/proc, even as root).
foreach(out IN ITEMS "${WORK_DIR}/a-file/run" /proc)
  foreach(case IN ITEMS pretrain coprocessor)
    with(${case} --out "${out}")
    expect_refused("${case} --out ${out}" "--out ${out}: " ${cmd})
  endforeach()
endforeach()

# Held-out text without one window of --seq-len: the sample holds out 8 runs of about 130 bytes.
foreach(case IN ITEMS pretrain coprocessor)
  with(${case} --seq-len 200)
  expect_refused("${case} --seq-len 200" "--seq-len 200 \\(held-out text\\): the validation split" ${cmd})
endforeach()

# Nothing refused above trained, so the directories hold no run: both still train to the end.
foreach(case IN ITEMS pretrain coprocessor)
  run_command(${${case}})
  if(NOT rc EQUAL 0)
    message(${failure} "${case} with good options failed (exit ${rc}):\n${out}\n${err}")
  else()
    message(STATUS "${case} with good options: trained")
  endif()
endforeach()
