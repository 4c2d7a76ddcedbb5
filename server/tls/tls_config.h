#pragma once
// TlsConfig: where a listener's TLS material lives (PEM files) and how often it is re-read, so
// that certificates rotated on disk (cert-manager renews a Kubernetes secret in place) are
// served to new connections without a restart. Shared by every listener: the gRPC API (through
// gRPC's FileWatcherCertificateProvider), and any OpenSSL-based server (TlsContextSource below,
// which rebuilds its SSL_CTX when a file changes).
//
//   cert       certificate chain, leaf first          (--tls-cert)
//   key        the leaf's private key                  (--tls-key)
//   client_ca  CA bundle clients must chain to (mTLS)  (--tls-client-ca; empty: no client certs)
//
// Thread-safe: TlsConfig is plain data; TlsContextSource may be called from any thread.

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"

namespace hkv {

struct TlsConfig {
  std::string cert;
  std::string key;
  std::string client_ca;
  absl::Duration reload_interval = absl::Seconds(60);

  bool enabled() const { return !cert.empty() || !key.empty(); }
  bool mutual() const { return !client_ca.empty(); }
};

// OK when TLS is off, or when the cert and key are both set, readable, PEM, and match each
// other, and the client CA (when set) is a readable PEM bundle. INVALID_ARGUMENT says which
// file is wrong; a client CA without a cert is INVALID_ARGUMENT too.
absl::Status ValidateTlsConfig(const TlsConfig& config);

// gRPC server credentials that re-read the files every reload_interval; with a client CA, a
// client must present a certificate chaining to it (else the handshake fails).
// REQUIRES: config.enabled() and ValidateTlsConfig(config).ok().
std::shared_ptr<grpc::ServerCredentials> GrpcServerTlsCredentials(const TlsConfig& config);

// The SSL_CTX of an OpenSSL server, rebuilt from the files when their modification times or
// sizes change (checked at most once per reload_interval). A reload that fails (a half-written
// rotation) keeps the previous context and logs the reason.
class TlsContextSource {
 public:
  // Loads the files once; the errors of ValidateTlsConfig.
  static absl::StatusOr<std::unique_ptr<TlsContextSource>> Create(const TlsConfig& config);

  // Returns the context new connections use. Existing connections keep theirs (shared).
  std::shared_ptr<SSL_CTX> Current();

 private:
  explicit TlsContextSource(TlsConfig config) : config_(std::move(config)) {}
  std::string Stamp() const;

  const TlsConfig config_;
  absl::Mutex mu_;
  std::shared_ptr<SSL_CTX> ctx_ ABSL_GUARDED_BY(mu_);
  std::string stamp_ ABSL_GUARDED_BY(mu_);  // mtimes and sizes of the files loaded
  absl::Time checked_ ABSL_GUARDED_BY(mu_);
};

// Builds a server SSL_CTX from the files (TLS 1.2+; with a client CA, client certificates
// required and verified). INVALID_ARGUMENT names the file that failed.
absl::StatusOr<std::shared_ptr<SSL_CTX>> NewServerSslContext(const TlsConfig& config);

}  // namespace hkv
