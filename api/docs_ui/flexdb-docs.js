// Starts Swagger UI on the OpenAPI document of the API that served this page. Everything the
// page loads comes from that API (its Content-Security-Policy allows nothing else).
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    // Swagger UI's default sends the document to a public validator; this page stays offline.
    validatorUrl: null,
    // "Authorize" keeps the bearer token for this page only, not in the browser's storage.
    persistAuthorization: false,
    displayRequestDuration: true,
  });
});
