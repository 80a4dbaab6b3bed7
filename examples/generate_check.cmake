# generate end to end, run by ctest (examples/CMakeLists.txt):
#   cmake -DGENERATE=<generate> -DPRETRAIN=<pretrain> -DTRAIN_COPROCESSOR=<train_coprocessor>
#         -DSPM_TRAIN=<spm_train or empty> -DSOURCE_DIR=<repo> -DWORK_DIR=<scratch> -P generate_check.cmake
# 1. generate continues a prompt with a byte-level model directory (the Llama test fixture), alone
#    and augmented by a coprocessor trained here for a few steps, and refuses unknown flags and a
#    model whose vocabulary no tokenizer in the directory spells.
# 2. With SPM_TRAIN: a SentencePiece model trained here on the test sample, a decoder pretrained
#    over its vocabulary (pretrain --tokenizer), whose directory then holds the same tokenizer.model
#    and which generate reads back, alone and with a coprocessor train_coprocessor trained on the
#    sample in the decoder's tokens; the tokenizer in a byte-level directory is refused, naming both
#    sizes.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(fixture "${SOURCE_DIR}/tests/data/hf/llama")
set(sample "${SOURCE_DIR}/tests/data/sample.txt")

include("${CMAKE_CURRENT_LIST_DIR}/run_command.cmake")

# Runs a command (run_command); expect_success TRUE/FALSE. Leaves its stdout and stderr in `out` and
# `err`.
function(run name expect_success)
  run_command(${ARGN})
  if(expect_success AND NOT rc EQUAL 0)
    message(FATAL_ERROR "${name} failed (${rc}):\n${out}\n${err}")
  elseif(NOT expect_success AND rc EQUAL 0)
    message(FATAL_ERROR "${name} should have been refused:\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
  set(err "${err}" PARENT_SCOPE)
endfunction()

function(expect_match name text pattern)
  if(NOT text MATCHES "${pattern}")
    message(FATAL_ERROR "${name}: expected to match '${pattern}', got:\n${text}")
  endif()
  message(STATUS "${name}: ok")
endfunction()

# 1. Byte level.
run("generate --help" TRUE "${GENERATE}" --help)
expect_match("--help lists --coprocessor" "${out}" "--coprocessor")
run("generate with an unknown flag" FALSE "${GENERATE}" --model "${fixture}" --prompt "x" --temprature 0.5)
expect_match("an unknown flag is named" "${err}" "--temprature")
run("generate with nothing but an unknown flag" FALSE "${GENERATE}" --bogus)
expect_match("the unknown flag is named before anything missing" "${err}" "not expected: --bogus")
run("generate without --model" FALSE "${GENERATE}" --prompt "x")
expect_match("a missing --model is named" "${err}" "--model")
run("generate with a byte-level model" TRUE "${GENERATE}" --model "${fixture}" --prompt "Hello, " --max-tokens 16
    --seed 3 --threads 1)
expect_match("the continuation starts with the prompt" "${out}" "^Hello, ")
expect_match("the summary names the byte tokenizer and the token count" "${err}" "tokenizer bytes \\(256 ids\\).*16 tokens")
# A coprocessor directory from a few steps of train_coprocessor, then generation with it and without.
run("train_coprocessor for 4 steps" TRUE "${TRAIN_COPROCESSOR}" --decoder "${fixture}" --fortunes EMPTY --dictionary EMPTY
    --text "${sample}" --latents 2 --ahead 4 --points 4 --batch 2 --seq-len 32 --steps 4 --warmup 1
    --checkpoint-every 4 --curve-every 2 --curve-eval-every 4 --curve-eval-batches 1 --eval-batches 1
    --eval-points 4 --threads 1 --out "${WORK_DIR}/coprocessor-run")
run("generate with a coprocessor, then without" TRUE "${GENERATE}" --model "${fixture}" --prompt "Hello, "
    --coprocessor "${WORK_DIR}/coprocessor-run/coprocessor" --every 4 --compare --max-tokens 9 --greedy --threads 1)
expect_match("both continuations start with the prompt" "${out}" "^Hello, .*\n\nHello, ")
expect_match("latents go in after the prompt and every 4 tokens" "${err}"
             "augmented: 9 tokens.*2 latents inserted after 0, 4, 8 generated tokens.*decoder: 9 tokens")
run("a decoder directory given as --coprocessor" FALSE "${GENERATE}" --model "${fixture}" --prompt "x"
    --coprocessor "${fixture}")
expect_match("the refusal says it is not a coprocessor" "${err}" "not a coprocessor directory")

run("generate --every without --coprocessor" FALSE "${GENERATE}" --model "${fixture}" --prompt "x" --every 4)
expect_match("--every alone is refused" "${err}" "need --coprocessor")

# A byte-level directory whose config.json has another vocabulary: no tokenizer spells it.
file(MAKE_DIRECTORY "${WORK_DIR}/wide")
file(READ "${fixture}/config.json" config)
string(REGEX REPLACE "\"vocab_size\": *256" "\"vocab_size\": 300" config "${config}")
file(WRITE "${WORK_DIR}/wide/config.json" "${config}")
run("a 300-token model without a tokenizer.model" FALSE "${GENERATE}" --model "${WORK_DIR}/wide" --prompt "x")
expect_match("the refusal names the directory and both sizes" "${err}"
             "wide has no tokenizer.model.*256 ids.*config.json gives the model a vocab_size of 300")

if(NOT SPM_TRAIN)
  message(STATUS "SentencePiece or spm_train not found: the subword half of this check is skipped")
  return()
endif()

# 2. A subword decoder: tokenizer, pretraining, generation.
run("spm_train on the test sample" TRUE "${SPM_TRAIN}" --input=${sample} --model_prefix=${WORK_DIR}/sample
    --model_type=bpe --vocab_size=400 --byte_fallback=true --normalization_rule_name=identity
    --remove_extra_whitespaces=false --num_threads=1)
run("pretrain --tokenizer" TRUE "${PRETRAIN}" --tokenizer "${WORK_DIR}/sample.model" --fortunes EMPTY --dictionary EMPTY
    --text "${sample}" --layers 1 --heads 2 --dim 32 --mlp 64 --seq-len 32 --batch 4 --steps 20 --log-every 10
    --eval-every 10 --eval-batches 2 --checkpoint-every 20 --sample-tokens 8 --threads 1 --out "${WORK_DIR}/run")
expect_match("pretrain trains over the tokenizer's 400 pieces" "${out}" "vocabulary 400.*nats/token")
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${WORK_DIR}/sample.model"
                        "${WORK_DIR}/run/model/tokenizer.model" RESULT_VARIABLE differ)
if(differ)
  message(FATAL_ERROR "the model directory's tokenizer.model is not the tokenizer pretrain was given")
endif()
run("generate with the subword model" TRUE "${GENERATE}" --model "${WORK_DIR}/run/model" --prompt "A banker is "
    --max-tokens 12 --greedy --threads 1)
expect_match("the subword continuation starts with the prompt" "${out}" "^A banker is ")
expect_match("the summary names the SentencePiece tokenizer" "${err}" "tokenizer SentencePiece .*tokenizer.model \\(400 pieces\\)")

# A coprocessor for the subword decoder, trained on the sample in its tokens, then generation with it.
run("train_coprocessor on the subword decoder" TRUE "${TRAIN_COPROCESSOR}" --decoder "${WORK_DIR}/run/model"
    --fortunes EMPTY --dictionary EMPTY --text "${sample}" --latents 2 --ahead 4 --points 4 --batch 2 --seq-len 32 --steps 4
    --warmup 1 --checkpoint-every 4 --curve-every 2 --curve-eval-every 4 --curve-eval-batches 1 --eval-batches 1
    --eval-points 4 --threads 1 --out "${WORK_DIR}/subword-coprocessor-run")
run("generate with the subword model and its coprocessor" TRUE "${GENERATE}" --model "${WORK_DIR}/run/model"
    --prompt "A banker is " --coprocessor "${WORK_DIR}/subword-coprocessor-run/coprocessor" --max-tokens 6 --greedy
    --threads 1)
expect_match("the augmented subword continuation starts with the prompt" "${out}" "^A banker is ")
expect_match("its latents go in after the prompt" "${err}" "2 latents inserted after 0 generated tokens")

# The same tokenizer beside a byte-level model: the sizes disagree.
file(COPY "${fixture}/config.json" "${fixture}/model.safetensors" DESTINATION "${WORK_DIR}/mismatch")
execute_process(COMMAND "${CMAKE_COMMAND}" -E copy "${WORK_DIR}/sample.model" "${WORK_DIR}/mismatch/tokenizer.model")
run("a byte-level model with a 400-piece tokenizer" FALSE "${GENERATE}" --model "${WORK_DIR}/mismatch" --prompt "x")
expect_match("the refusal names the tokenizer file and both sizes" "${err}"
             "mismatch/tokenizer.model has 400 pieces, but .*mismatch/config.json gives the model a vocab_size of 256")
