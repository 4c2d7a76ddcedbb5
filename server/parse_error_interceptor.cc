#include "server/parse_error_interceptor.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "google/protobuf/descriptor.h"
#include "hkv/v1/generation.grpc.pb.h"

namespace hkv {
namespace {

using grpc::experimental::InterceptionHookPoints;

class ParseErrorInterceptor final : public grpc::experimental::Interceptor {
 public:
  // `method` and `request_type` belong to the factory, which the server keeps until it is gone.
  ParseErrorInterceptor(const std::string* method, const std::string* request_type)
      : method_(method), request_type_(request_type) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    // The server fills the request before POST_RECV_MESSAGE; nullptr means it did not parse.
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsed_.store(true, std::memory_order_relaxed);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        unparsed_.load(std::memory_order_relaxed)) {
      const grpc::Status status = methods->GetSendStatus();
      // Only gRPC's own parse-failure status: anything else was decided deliberately.
      if (status.error_code() == grpc::StatusCode::INTERNAL) {
        std::string message =
            absl::StrCat("request to ", *method_, " does not parse as ", *request_type_,
                         " (malformed or truncated protobuf bytes, or a string field that is "
                         "not valid UTF-8)");
        if (!status.error_message().empty()) {
          absl::StrAppend(&message, ": ", status.error_message());
        }
        methods->ModifySendStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message));
      }
    }
    methods->Proceed();
  }

 private:
  const std::string* method_;
  const std::string* request_type_;
  // Set on the thread that received the request, read on the one that sends the status (gRPC
  // orders the two hooks; atomic so that no reader needs to know that).
  std::atomic<bool> unparsed_{false};
};

}  // namespace

ParseErrorInterceptorFactory::ParseErrorInterceptorFactory(const std::string& service) {
  const google::protobuf::ServiceDescriptor* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
  HKV_CHECK(descriptor != nullptr) << "no generated proto service " << service;
  for (int i = 0; i < descriptor->method_count(); ++i) {
    const google::protobuf::MethodDescriptor* method = descriptor->method(i);
    if (method->client_streaming()) continue;
    // gRPC names it "/pkg.Service/Method".
    request_types_.emplace(absl::StrCat("/", service, "/", method->name()),
                           method->input_type()->full_name());
  }
}

grpc::experimental::Interceptor* ParseErrorInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  if (info->method() == nullptr) return nullptr;
  const auto it = request_types_.find(info->method());
  if (it == request_types_.end()) return nullptr;
  return new ParseErrorInterceptor(&it->first, &it->second);
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
ParseErrorInterceptors() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> list;
  list.push_back(
      std::make_unique<ParseErrorInterceptorFactory>(hkv::v1::Generation::service_full_name()));
  return list;
}

}  // namespace hkv
