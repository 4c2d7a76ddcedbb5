#include "server/tls/tls_config.h"

#include <openssl/err.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace hkv {
namespace {

// The oldest OpenSSL error on this thread as text (and clears the queue).
std::string SslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof(buf));
  return buf;
}

absl::Status Readable(const std::string& path, const char* flag) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read '", path, "'"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<SSL_CTX>> NewServerSslContext(const TlsConfig& c) {
  if (c.cert.empty() || c.key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  if (absl::Status s = Readable(c.cert, "--tls-cert"); !s.ok()) return s;
  if (absl::Status s = Readable(c.key, "--tls-key"); !s.ok()) return s;
  if (c.mutual()) {
    if (absl::Status s = Readable(c.client_ca, "--tls-client-ca"); !s.ok()) return s;
  }
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", SslError()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), c.cert.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert '", c.cert, "' is not a PEM certificate chain: ", SslError()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), c.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key '", c.key, "' is not a PEM private key that matches --tls-cert '",
                     c.cert, "': ", SslError()));
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key '", c.key, "' does not match --tls-cert '", c.cert, "'"));
  }
  if (c.mutual()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), c.client_ca.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-client-ca '", c.client_ca, "' is not a PEM CA bundle: ", SslError()));
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return ctx;
}

absl::Status ValidateTlsConfig(const TlsConfig& config) {
  if (!config.enabled()) {
    if (config.mutual()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    return absl::OkStatus();
  }
  return NewServerSslContext(config).status();
}

std::shared_ptr<grpc::ServerCredentials> GrpcServerTlsCredentials(const TlsConfig& config) {
  const unsigned int interval =
      static_cast<unsigned int>(std::max<int64_t>(1, absl::ToInt64Seconds(config.reload_interval)));
  auto provider = config.mutual()
                      ? std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
                            config.key, config.cert, config.client_ca, interval)
                      : std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
                            config.key, config.cert, interval);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (config.mutual()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::unique_ptr<TlsContextSource>> TlsContextSource::Create(
    const TlsConfig& config) {
  std::unique_ptr<TlsContextSource> source(new TlsContextSource(config));
  const std::string stamp = source->Stamp();
  absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = NewServerSslContext(config);
  if (!ctx.ok()) return ctx.status();
  absl::MutexLock lock(&source->mu_);
  source->ctx_ = *std::move(ctx);
  source->stamp_ = stamp;
  source->checked_ = absl::Now();
  return source;
}

std::string TlsContextSource::Stamp() const {
  std::ostringstream out;
  for (const std::string* path : {&config_.cert, &config_.key, &config_.client_ca}) {
    struct stat st;
    if (path->empty() || stat(path->c_str(), &st) != 0) {
      out << "-;";
      continue;
    }
    out << st.st_mtim.tv_sec << "." << st.st_mtim.tv_nsec << ":" << st.st_size << ":" << st.st_ino
        << ";";
  }
  return out.str();
}

std::shared_ptr<SSL_CTX> TlsContextSource::Current() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  if (now - checked_ < config_.reload_interval) return ctx_;
  checked_ = now;
  const std::string stamp = Stamp();
  if (stamp == stamp_) return ctx_;
  absl::StatusOr<std::shared_ptr<SSL_CTX>> ctx = NewServerSslContext(config_);
  if (!ctx.ok()) {
    HKV_LOG(WARNING) << "TLS files changed but do not load (keeping the previous ones): "
                     << ctx.status().message();
    return ctx_;
  }
  HKV_LOG(INFO) << "TLS certificate reloaded from " << config_.cert;
  ctx_ = *std::move(ctx);
  stamp_ = stamp;
  return ctx_;
}

}  // namespace hkv
