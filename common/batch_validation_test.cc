#include "common/batch_validation.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::HasSubstr;

// One sequence, 1 layer x 2 heads, block size 4: rows of 2 and 1 blocks holding 6 and 3 tokens.
Batch Valid() {
  Batch b;
  b.num_layers = 1;
  b.num_kv_heads = 2;
  b.block_size = 4;
  b.seqs.resize(1);
  b.seqs[0].tokens = {1};
  b.kv_indptr = {0, 2, 3};
  b.kv_indices = {4, 5, 6};
  b.kv_len_before = {5, 2};
  b.kv_len_after = {6, 3};
  b.block_copies = {{4, 7}};
  return b;
}

void ExpectMalformed(const absl::Status& s, const char* what) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what;
  EXPECT_THAT(s.message(), HasSubstr("malformed batch")) << what;
}

TEST(BatchValidationTest, AValidBatchPasses) {
  const Batch b = Valid();
  EXPECT_TRUE(ValidateBatchShape(b).ok());
  EXPECT_TRUE(ValidateRowLengths(b).ok());
  EXPECT_TRUE(ValidateBlockIds(b, 8).ok());
  Batch empty;  // no sequences: one indptr entry, nothing else
  empty.kv_indptr = {0};
  EXPECT_TRUE(ValidateBatchShape(empty).ok());
  ExpectMalformed(ValidateBatchShape(Batch{}), "no indptr at all");
}

TEST(BatchValidationTest, CsrSizesMustMatchTheRows) {
  Batch b = Valid();
  b.kv_indptr.pop_back();
  ExpectMalformed(ValidateBatchShape(b), "short indptr");
  ExpectMalformed(ValidatePageTable(b), "short indptr alone");
  b = Valid();
  b.kv_len_before.push_back(0);
  ExpectMalformed(ValidateBatchShape(b), "long kv_len_before");
  EXPECT_TRUE(ValidatePageTable(b).ok()) << "row lengths are not the page table's";
  b = Valid();
  b.kv_len_after.pop_back();
  ExpectMalformed(ValidateBatchShape(b), "short kv_len_after");
  b = Valid();
  b.num_kv_heads = 3;  // 3 rows expected
  ExpectMalformed(ValidateBatchShape(b), "rows of another shape");
  b = Valid();
  b.num_layers = -1;
  ExpectMalformed(ValidateBatchShape(b), "negative shape");
}

TEST(BatchValidationTest, IndptrStartsAtZeroRisesAndEndsAtTheIndices) {
  Batch b = Valid();
  b.kv_indptr = {1, 2, 3};
  ExpectMalformed(ValidateBatchShape(b), "start");
  b = Valid();
  b.kv_indptr = {0, 2, 2};
  ExpectMalformed(ValidateBatchShape(b), "end");
  b = Valid();
  b.kv_indptr = {0, 4, 3};
  b.kv_indices = {4, 5, 6};
  const absl::Status s = ValidateBatchShape(b);
  ExpectMalformed(s, "decreasing");
  EXPECT_THAT(s.message(), HasSubstr("row 1"));
}

TEST(BatchValidationTest, RowLengthsMustFitTheirBlocks) {
  Batch b = Valid();
  b.kv_len_after[1] = 5;  // one block of 4
  ExpectMalformed(ValidateRowLengths(b), "too few blocks");
  b = Valid();
  b.kv_len_before[0] = 7;  // shrinks
  ExpectMalformed(ValidateRowLengths(b), "shrinking row");
  b = Valid();
  b.kv_len_before[0] = -1;
  ExpectMalformed(ValidateRowLengths(b), "negative length");
  b = Valid();
  b.block_size = 0;
  ExpectMalformed(ValidateRowLengths(b), "block size");
}

TEST(BatchValidationTest, BlockIdsAndCopiesMustLieInThePool) {
  Batch b = Valid();
  ExpectMalformed(ValidateBlockIds(b, 6), "id 6 of 6");
  b.kv_indices[0] = -1;
  ExpectMalformed(ValidateBlockIds(b, 8), "negative id");
  b = Valid();
  b.block_copies = {{4, 8}};
  ExpectMalformed(ValidateBlockIds(b, 8), "copy outside");
  b = Valid();
  b.seqs[0].layer_blocks = {3, 8};  // an adaptive reservation
  ExpectMalformed(ValidateBlockIds(b, 8), "reserved block id 8");
  b.seqs[0].layer_blocks = {3, -2};
  ExpectMalformed(ValidateBlockIds(b, 8), "reserved block id -2");
  b.seqs[0].layer_blocks = {3, 7};
  EXPECT_TRUE(ValidateBlockIds(b, 8).ok());
}

}  // namespace
}  // namespace hkv
